"""The improve loop where the store is on a Modal Volume: `wikiembed finetune --store modal:...` and the
`improve-model` flow, with Modal's cloud as `tests/standins/modal_cloud.py` (the real library code in
container subprocesses over an emulated Volume; shards embedded there by the real engine on the CPU, as
`TorchShards` does). The fine-tune, the comparison and the export run in the containers; the flow's
machine sends paths and gets figures back. Real text: Python's reference topics (34 articles)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.corpus import LEET
from tests.flows.test_finetune import title_pairs
from tests.standins.modal_cloud import CloudDir, ModalCloud
from wikiembed.flows.cli import main

VOLUME = "wikiembed-store"
STORE = f"modal:{VOLUME}/wiki"
# What may cross between the flow's machine and Modal in one call of the improve loop: paths out, a
# record or figures back (the model is ~90 MB, the stores' vectors hundreds of KB).
MAX_CALL_BYTES = 10_000


@pytest.fixture(scope="module")
def cloud_dir(prefect_api, topics, tmp_path_factory) -> Iterator[CloudDir]:
    """A Modal cloud whose Volume holds the topics embedded into `STORE` (3 shards) by `--backend modal`, installed
    for the module's tests: its containers stay up from one test to the next, as Modal keeps a container warm for
    the next input (each call reloads the Volume first)."""
    from wikiembed.flows.embed_dataset import embed_dataset

    cloud = CloudDir(tmp_path_factory.mktemp("modal-improve") / "cloud", VOLUME)
    # One container per class: the loop's steps are calls one after another, and the shards' concurrency is
    # test_modal_fanout.py's subject; a second container would only start another process (torch, the model).
    cloud.configure({"TorchShards": {"backend": "local", "device": "cpu"}}, max_containers=1)
    with pytest.MonkeyPatch.context() as mp, ModalCloud(cloud).installed(mp):
        summary = embed_dataset(source=str(topics), store=STORE, shard_rows=12, backend="modal", compute={"modal_class": "Torch"})
        assert summary["shards_done"] == summary["shards_total"] == 3
        yield cloud


def _put(cloud: CloudDir, path: str, rows: list[dict]) -> str:
    """`modal volume put`: a file onto the Volume, committed; its spec."""
    dest = cloud.committed / path
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return f"modal:{VOLUME}/{path}"


def _calls_since(cloud: CloudDir, start: int) -> list[dict]:
    return cloud.calls()[start:]


def test_finetune_of_a_volume_store_runs_next_to_it(cloud_dir, topics, tmp_path, capsys):
    rows = [json.loads(line) for line in title_pairs(topics, tmp_path / "pairs.jsonl").read_text().splitlines()]
    pairs = _put(cloud_dir, "feedback/titles.jsonl", rows + [{"query": "a topic nobody wrote", "id": "no-such-topic"}])
    out, payload = f"modal:{VOLUME}/models/cli", tmp_path / "ft.json"
    start = len(cloud_dir.calls())
    code = main(["finetune", "--store", STORE, "--pairs", pairs, "--out", out, "--json", str(payload), "--batch-size", "8",
                 "--negatives", "0", "--max-seq-length", "64"])
    printed = capsys.readouterr()
    # A pairs file of this machine cannot reach the fine-tune: refused before any call, with the way to put it there.
    assert main(["finetune", "--store", STORE, "--pairs", str(tmp_path / "pairs.jsonl"), "--out", f"modal:{VOLUME}/models/x"]) == 2
    local_pairs = capsys.readouterr().err
    # An error raised by the fine-tune in its container comes back as it is: one message, exit 2.
    assert main(["finetune", "--store", STORE, "--pairs", pairs, "--out", out, "--epochs", "2"]) == 2
    taken = capsys.readouterr().err
    assert code == 0, printed.err
    result = json.loads(payload.read_text())
    assert result["out"] == out and result["store"] == STORE and result["pairs_file"] == pairs
    assert result["pairs"] == {"read": 35, "matched": 34, "unmatched": 1, "relevant_missing": 1, "near_duplicates": 0}
    assert (result["train"], result["holdout"]) == (27, 7) and result["device"] == "cpu"
    # The model folder was written on the Volume (committed), with its record.
    folder = cloud_dir.store("models/cli")
    assert (folder / "model.safetensors").exists() and json.loads((folder / "finetune.json").read_text())["after"] == result["after"]
    assert f"into {out}" in printed.out and "held out 7 queries" in printed.out
    assert "1 of 35 queries name no article" in printed.err
    assert "modal volume put wikiembed-store" in local_pairs and local_pairs.count("error:") == 1
    assert "exists and holds something else" in taken and taken.count("error:") == 1 and "redeploy" not in taken
    calls = [c for c in _calls_since(cloud_dir, start) if c["cls"] == "Finetune"]
    assert [c["method"] for c in calls] == ["run", "run"]  # the refused local pairs file never left this machine
    assert max(c["bytes_out"] + c["bytes_in"] for c in calls) < MAX_CALL_BYTES


def test_improve_model_on_a_volume_store_fine_tunes_reembeds_compares_and_publishes_there(cloud_dir, topics, monkeypatch):
    """Leetspeak titles (see test_serve's loop): the fine-tuned model is better, so the new store is published
    to a folder on the same Volume; every step ran in a container."""
    from wikiembed import model as model_module
    from wikiembed.backends.factory import open_backend
    from wikiembed.evaluate import evaluate
    from wikiembed.flows.improve_model import improve_model
    from wikiembed.improve import decide
    from wikiembed.results import Figures
    from wikiembed.model import model_info

    rows = [{"query": r["title"].lower().translate(LEET), "id": r["id"]} for r in map(json.loads, topics.read_text().splitlines())]
    pairs = _put(cloud_dir, "feedback/leet.jsonl", rows)
    out, new, published = f"modal:{VOLUME}/models/leet", f"modal:{VOLUME}/wiki-leet", f"modal:{VOLUME}/published"
    start = len(cloud_dir.calls())
    result = improve_model(STORE, pairs, out, new, upload_to=published, metric="recall_at_10", margin=0.05,
                           finetune={"batch_size": 8, "epochs": 2, "learning_rate": 1e-4, "max_seq_length": 64}, min_holdout=5)
    calls = _calls_since(cloud_dir, start)
    methods = [(c["cls"], c["method"]) for c in calls]
    assert methods.count(("Finetune", "run")) == 1 and methods.count(("Finetune", "compare")) == 1
    assert methods.index(("Finetune", "run")) < methods.index(("TorchShards", "run_shard")) < methods.index(("Finetune", "compare"))
    assert max(c["bytes_out"] + c["bytes_in"] for c in calls) < MAX_CALL_BYTES

    # Re-embedded on the Volume by the shard containers with the model they loaded from it.
    new_store = cloud_dir.store("wiki-leet")
    manifest = json.loads((new_store / "manifest.json").read_text())
    assert manifest["model"]["model_id"] == "/store/models/leet"
    assert result["reembed"]["embedded_chunks"] == result["reembed"]["chunks"] > 0 and result["reembed"]["reused_chunks"] == 0
    table = pq.read_table(new_store / "data", columns=["text", "embedding"])
    folder = cloud_dir.store("models/leet")
    engine = open_backend("local", str(folder), device="cpu")
    expected = np.asarray(engine.embed(table.column("text").to_pylist(), model_info(str(folder)).prompt(None, "document")))
    stored = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    assert np.min(np.sum(stored * expected, axis=1)) > 0.999

    # Compared at the Volume: the same figures as the same comparison run here on a copy of both stores.
    assert result["old"]["store"] == STORE and result["new"]["store"] == new and result["new"]["model"] == out
    resolve = model_module.resolve_model_path
    monkeypatch.setattr(model_module, "resolve_model_path",
                        lambda name: resolve(str(cloud_dir.committed / name.removeprefix("/store/")) if name.startswith("/store/") else name))
    here = evaluate(cloud_dir.store("wiki"), queries=folder / "heldout.jsonl", against=new_store, record=False)
    for metric in ("recall_at_1", "recall_at_10", "mrr", "ndcg_at_10"):
        assert result["old"][metric] == pytest.approx(here.value(metric)) and result["new"][metric] == pytest.approx(here.against.value(metric))
    assert result["old"]["n"] == result["new"]["n"] == 7

    # Published only because better, from the Volume to a folder on it.
    assert (result["publish"], result["reason"]) == decide(Figures.from_json(result["difference"]), "recall_at_10", 0.05)
    assert result["publish"] is True, result["reason"]
    assert result["published"]["published"]["target"] == published
    folder_published = cloud_dir.store("published")
    assert pq.read_table(folder_published / "data").num_rows == table.num_rows
    assert "/store/models/leet" in (folder_published / "README.md").read_text()


def test_improve_model_refuses_paths_off_the_stores_volume_before_any_call(cloud_dir, tmp_path):
    from wikiembed.errors import InputError
    from wikiembed.flows.improve_model import improve_model

    pairs = f"modal:{VOLUME}/feedback/titles.jsonl"
    start = len(cloud_dir.calls())
    with pytest.raises(InputError, match=r"models/NAME"):
        improve_model(STORE, pairs, str(tmp_path / "model"), f"modal:{VOLUME}/wiki-x")
    with pytest.raises(InputError, match=r"mount only that one"):
        improve_model(STORE, pairs, f"modal:{VOLUME}/models/x", "modal:other-volume/wiki-x")
    with pytest.raises(InputError, match=r"hub:ORG/NAME"):
        improve_model(STORE, pairs, f"modal:{VOLUME}/models/x", f"modal:{VOLUME}/wiki-x", upload_to=f"dir:{tmp_path / 'here'}")
    assert not [c for c in _calls_since(cloud_dir, start) if c["cls"] == "Finetune"]
    assert not cloud_dir.store("models/x").exists() and not Path(tmp_path / "model").exists()
