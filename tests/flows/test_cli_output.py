"""What the command line prints for a user to read or paste: commands that survive copy and paste,
and output that a pipe may close early."""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.flows.conftest import REFERENCE_SOURCE
from tests.wikiembed.test_publish import make_store
from wikiembed.errors import StoreError
from wikiembed.flows.cli import _print_summary
from wikiembed.results import RunSummary
from wikiembed.flows.run_reports import rerun_command, rerun_deployment_command
from wikiembed.publish import publish

# A path a shell would split at the space and expand at the dollar sign.
AWKWARD = "my runs/$HOME's store"


def _commands(text: str) -> list[list[str]]:
    """Each backticked command in a message, split as a POSIX shell would."""
    return [shlex.split(c) for c in re.findall(r"`([^`]+)`", text)]


def _store_arg(words: list[str]) -> str:
    return words[words.index("--store") + 1]


def test_printed_rerun_commands_quote_the_store(tmp_path: Path) -> None:
    store = str(tmp_path / AWKWARD)
    out = io.StringIO()
    summary = RunSummary.from_json({
        "store": store, "generation": None, "source": "sample:3", "model": "m", "revision": "r", "backend": "local",
        "device": "cpu", "chunking": {}, "tokenizer": None, "shards_total": 2, "shards_done": 1, "shards_failed": 1,
        "failed_shards": [1], "pending_shards": [], "rows": 3, "skipped_rows": 0, "chunks": 4, "embedded_chunks": 4,
        "reused_chunks": 0, "kept_chunks": 0, "retries": 0, "seconds": 1.0, "chars_per_s": 1.0})
    _print_summary(summary, out=out)
    lines = out.getvalue().splitlines()
    assert shlex.split(lines[-1]) == ["wikiembed", "rerun", "--store", store, "--failed"]
    assert _store_arg(_commands(lines[-2])[0]) == store
    assert shlex.split(rerun_command(store, "3,17")) == ["wikiembed", "rerun", "--store", store, "--shards", "3,17"]
    assert shlex.split(rerun_deployment_command(store, "failed"))[-4:] == ["-p", f"store={store}", "-p", "shards=failed"]


def test_export_refusal_commands_quote_the_store(tmp_path: Path) -> None:
    root = tmp_path / AWKWARD
    store = make_store(root, done={0}, failed=frozenset({1}))
    with pytest.raises(StoreError) as info:
        publish(store, f"dir:{tmp_path / 'out'}")
    commands = _commands(str(info.value))
    assert [c[:2] for c in commands] == [["wikiembed", "status"], ["wikiembed", "rerun"]]
    assert {_store_arg(c) for c in commands} == {str(store)}


def _closed_pipe_run(env: dict, *args: str) -> subprocess.CompletedProcess:
    """Run the CLI with stdout a pipe whose reader has already gone, as after `| head -1`."""
    import os
    import sys

    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "wikiembed.flows.cli", *args], env=env, stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=600)
    finally:
        os.close(write)


def test_status_into_a_closed_pipe_ends_quietly(reference, cli_env: dict) -> None:
    proc = _closed_pipe_run(cli_env, "status", "--store", str(reference[0]))
    assert proc.returncode == 141 and proc.stderr == ""


def test_search_into_a_closed_pipe_ends_quietly_and_still_writes_its_json(reference, tmp_path: Path, cli_env: dict) -> None:
    store = reference[0]
    hits = tmp_path / "hits.json"
    proc = _closed_pipe_run(cli_env, "search", "--store", str(store), "-k", "3", "--json", str(hits), "history of a river")
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    assert len(json.loads(hits.read_text())["hits"]) == 3


def test_a_run_prints_its_estimate_line_before_embedding(reference) -> None:
    lines = reference[2].stderr.splitlines()
    articles = int(REFERENCE_SOURCE.removeprefix("sample:"))
    estimate = next(i for i, line in enumerate(lines) if line.startswith(f"estimate: {articles} articles"))
    first_bar = next(i for i, line in enumerate(lines) if line.startswith("["))
    assert estimate < first_bar
    assert "local on CPU: ~" in lines[estimate]


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_store_refusals_come_before_any_prefect_server(reference, tmp_path: Path, cli_env: dict) -> None:
    """With the Prefect API unreachable, a run that got as far as Prefect would fail on it (or start
    a server): the refusals below name the store, so they came first."""
    import os
    import sys
    import time

    env = {**cli_env, "PREFECT_API_URL": f"http://127.0.0.1:{_closed_port()}/api"}
    foreign = tmp_path / "mine"
    (foreign / "data").mkdir(parents=True)
    (foreign / "data" / "notes.txt").write_text("mine")
    cases = [
        (["--store", str(foreign)], "holds data of its own, so it is not a wikiembed store"),
        (["--store", str(reference[0]), "--chunk-size", "128"], "use a new store for this one (--store, or `-p store=...` for a deployment run"),
    ]
    for args, needle in cases:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "wikiembed.flows.cli", "run", "--source", "sample:20", *args],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert time.monotonic() - started < 60  # seconds of imports, not a server's start-up
    assert os.listdir(foreign) == ["data"] and os.listdir(foreign / "data") == ["notes.txt"]
