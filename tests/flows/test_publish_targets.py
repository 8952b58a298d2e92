"""Where a run or the improve loop publishes (`--upload-to`) is checked before any work: a missing
Hub token, a folder that cannot be made, or someone else's folder exits 2 with one message before
a shard is embedded or a model fine-tuned, not after. The CLI's `main` in this process, the real
Prefect API (no `hf-token` Secret block in it) and the bundled model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.flows.conftest import cli_here
from tests.flows.test_improve_model import title_pairs


def _targets(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """case -> (--upload-to, what the one message says)."""
    (tmp_path / "a-file").write_text("not a folder")
    theirs = tmp_path / "their-dataset"
    theirs.mkdir()
    (theirs / "README.md").write_text("their card")
    return {
        "hub without a token": ("hub:my-org/simplewiki", "no Hugging Face token for hub:my-org/simplewiki: set HF_TOKEN"),
        "hub id malformed": ("hub:my-org", "is not a Hub repo id"),
        "folder under a file": (f"dir:{tmp_path / 'a-file' / 'out'}", "is a file"),
        "someone else's folder": (f"dir:{theirs}", "holds files wikiembed did not write (README.md)"),
    }


CASES = ["hub without a token", "hub id malformed", "folder under a file", "someone else's folder"]


@pytest.mark.parametrize("case", CASES)
def test_run_checks_where_it_publishes_before_any_shard(prefect_api, capsys, tmp_path, monkeypatch, case) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    target, says = _targets(tmp_path)[case]
    store, summary = tmp_path / "store", tmp_path / "summary.json"
    done = cli_here(capsys, "run", "--source", "sample:20", "--store", str(store), "--shard-rows", "10",
                    "--upload-to", target, "--summary-json", str(summary))
    assert done.returncode == 2, done.stderr[-2000:]
    assert says in done.stderr and done.stderr.count("error:") == 1, done.stderr[-2000:]
    assert not store.exists() and not summary.exists()  # nothing embedded, not even a lock file


@pytest.mark.parametrize("case", ["hub without a token", "someone else's folder"])
def test_improve_checks_where_it_publishes_before_the_fine_tune(compact_store, topics, capsys, tmp_path, monkeypatch, case) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    target, says = _targets(tmp_path)[case]
    pairs = title_pairs(topics, tmp_path / "pairs.jsonl")
    out, new, payload = tmp_path / "model", tmp_path / "new-store", tmp_path / "improve.json"
    done = cli_here(capsys, "improve", "--store", str(compact_store), "--pairs", str(pairs), "--out", str(out),
                    "--new-store", str(new), "--upload-to", target, "--json", str(payload))
    assert done.returncode == 2, done.stderr[-2000:]
    assert says in done.stderr and done.stderr.count("error:") == 1, done.stderr[-2000:]
    assert not out.exists() and not new.exists() and not payload.exists()



def test_a_rerun_that_completes_the_store_checks_its_recorded_target_first(prefect_api, capsys, tmp_path, monkeypatch) -> None:
    """A rerun publishes to the run's recorded --upload-to once every shard is done: with no token, it is refused
    before any shard is redone."""
    from wikiembed.store import Store

    monkeypatch.delenv("HF_TOKEN", raising=False)
    store = tmp_path / "store"
    done = cli_here(capsys, "run", "--source", "sample:10", "--store", str(store), "--shard-rows", "5")
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = Store(store).manifest_path
    record = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**record, "settings": {**record["settings"], "upload_to": "hub:my-org/simplewiki"}}))
    Store(store).forget(0)  # shard 0 pending again: the rerun would embed it, then publish
    again = cli_here(capsys, "rerun", "--store", str(store), "--shards", "0")
    assert again.returncode == 2 and "no Hugging Face token for hub:my-org/simplewiki" in again.stderr, again.stderr[-2000:]
    assert not Store(store).data_path(0).exists()  # refused before the shard was embedded
