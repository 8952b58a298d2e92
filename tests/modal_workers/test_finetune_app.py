"""The Modal fine-tune class run in-process (`.local()`), on a folder standing for the store Volume: the same
library code as `wikiembed finetune`, given Volume paths, writing the model folder back onto the Volume."""

from __future__ import annotations

import json
import shutil

import pytest

from modal_workers import finetune_app
from tests.flows.conftest import compact_store, topics  # noqa: F401 (the flow tests' store of the topics, embedded once a run)


@pytest.mark.slow
def test_finetune_class_trains_next_to_the_store(compact_store, topics, tmp_path, monkeypatch):  # noqa: F811
    volume = tmp_path / "volume"
    shutil.copytree(compact_store, volume / "wiki", symlinks=True)
    (volume / "feedback").mkdir()
    rows = [{"query": r["title"], "id": r["id"]} for r in map(json.loads, topics.read_text().splitlines())]
    (volume / "feedback" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv(finetune_app.MOUNT_ENV, str(volume))
    record = finetune_app.Finetune().run.local("wiki", "/feedback/pairs.jsonl", "models/w49",
                                               {"batch_size": 8, "device": "cpu", "negatives": 0, "max_seq_length": 64})
    out = volume / "models" / "w49"
    assert record["out"] == str(out) and record["store"] == str(volume / "wiki")
    assert (record["train"], record["holdout"]) == (27, 7)
    assert json.loads((out / "finetune.json").read_text()) == record and (out / "model.safetensors").exists()


def test_volume_paths_map_under_the_mount():
    assert finetune_app.at_mount("/models/w49/") == "/store/models/w49"
    assert finetune_app.at_mount("wiki", "/tmp/v") == "/tmp/v/wiki"
