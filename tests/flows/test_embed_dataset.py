"""The `embed-dataset` and `rerun-shards` flows end to end: real Prefect API, real bundled model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from tests.flows.conftest import copy_store
from wikiembed.flows.embed_dataset import embed_dataset, rerun_shards
from wikiembed.errors import InputError
from wikiembed.store import Store


def _marker_times(store: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (store / "_done").glob("*.json")}


def _table(store: Path):
    return pq.read_table(store / "data").sort_by([("id", "ascending"), ("chunk_index", "ascending")])


@pytest.fixture(scope="module")
def sample_run(sample_store, tmp_path_factory):
    """(store, summary) of `embed_dataset(source="sample:60", shard_rows=20)`: this module's copy of the shared run
    (tests/flows/conftest.py's sample_store), which its tests rerun into."""
    return copy_store(sample_store[0], tmp_path_factory.mktemp("e2e") / "store"), sample_store[1]


def test_first_run_embeds_every_shard(sample_run):
    store, summary = sample_run
    assert summary["shards_total"] == 3 and summary["shards_done"] == 3 and summary["shards_failed"] == 0
    assert summary["rows"] == 60 and summary["chunks"] == summary["embedded_chunks"] > 60
    assert summary["reused_chunks"] == 0 and summary["chars_per_s"] > 0
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["plan"]["shards"] == [[0, 20], [20, 40], [40, 60]]
    for k in range(3):
        marker = json.loads((store / "_done" / f"{k:05d}.json").read_text())
        assert {"rows", "chunks", "sha256", "model", "seconds"} <= set(marker)


def test_output_loads_with_datasets_and_matches_sentence_transformers(sample_run):
    import datasets
    from sentence_transformers import SentenceTransformer

    from wikiembed.model import model_info

    store, summary = sample_run
    ds = datasets.load_dataset("parquet", data_dir=str(store / "data"), split="train")
    assert ds.num_rows == summary["chunks"]
    assert set(ds.column_names) == {"id", "url", "title", "chunk_index", "char_start", "char_end", "text", "embedding"}
    sample = ds.select(range(0, ds.num_rows, max(1, ds.num_rows // 40)))
    ours = np.array(sample["embedding"], dtype=np.float32)
    ref = SentenceTransformer(model_info().path, device="cpu").encode(sample["text"], normalize_embeddings=True)
    cos = (ours * ref).sum(axis=1)
    assert cos.min() >= 0.999
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-4)
    card = (store / "README.md").read_text()
    front = yaml.safe_load(card.split("---", 2)[1])
    features = {f["name"]: f for f in front["dataset_info"]["features"]}
    assert features["embedding"] == {"name": "embedding", "sequence": "float32", "length": 384}
    assert front["dataset_info"]["splits"] == [{"name": "train", "num_bytes": front["dataset_info"]["dataset_size"],
                                               "num_examples": summary["chunks"]}]


def test_rerunning_the_same_command_embeds_nothing(sample_run):
    store, _ = sample_run
    before = _marker_times(store)
    summary = embed_dataset(source="sample:60", store=str(store), shard_rows=20)
    assert summary["embedded_chunks"] == 0 and summary["shards_done"] == 3
    assert _marker_times(store) == before


def test_rerun_one_shard_reembeds_only_that_shard(sample_run):
    store, _ = sample_run
    before = _marker_times(store)
    old = _table(store)
    summary = rerun_shards(store=str(store), shards=[1])
    after = _marker_times(store)
    assert summary["rerun_shards"] == [1] and summary["shards_done"] == 3
    assert after["00000.json"] == before["00000.json"] and after["00002.json"] == before["00002.json"]
    assert after["00001.json"] != before["00001.json"]
    new = _table(store)
    assert new.column("text").to_pylist() == old.column("text").to_pylist()
    assert np.allclose(np.array(new.column("embedding").to_pylist()), np.array(old.column("embedding").to_pylist()), atol=1e-5)


def test_other_model_or_chunking_into_the_same_store_is_refused(sample_run):
    store, _ = sample_run
    with pytest.raises(InputError, match="use a new store for this one"):
        embed_dataset(source="sample:60", store=str(store), shard_rows=20, chunking={"chunk_size": 128})


def test_bad_rerun_shard_ids_name_the_range(sample_run):
    store, _ = sample_run
    with pytest.raises(InputError, match="0..2"):
        rerun_shards(store=str(store), shards=[7])


def test_a_rerun_skips_done_shards_through_their_markers_and_redoes_lost_ones(sample_store, tmp_path):
    """The `_done/` markers are the one record of what is finished: no Prefect result cache."""
    store = copy_store(sample_store[0], tmp_path / "store")
    first = sample_store[1]  # the run that made it: sample:60 in 3 shards of 20
    kept = (store / "_done" / "00001.json").stat()
    (store / "_done" / "00000.json").unlink()
    (store / "data" / "00000.parquet").unlink()
    again = embed_dataset(source="sample:60", store=str(store), shard_rows=20)
    assert again["shards_done"] == 3
    assert 0 < again["embedded_chunks"] + again["reused_chunks"] < first["chunks"]  # shard 0 only
    assert Store(store).read_done(0) is not None
    after = (store / "_done" / "00001.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)  # shard 1 untouched


def test_an_unchanged_rerun_reads_no_data_file(sample_store, tmp_path, monkeypatch):
    """Resume, card and summary of a run with nothing to do cost stat calls, not reads of finished
    shards: O(changed shards), not O(dataset)."""
    import pyarrow.parquet as parquet

    import wikiembed.store as store_module

    store = copy_store(sample_store[0], tmp_path / "store")  # sample:60 in 3 shards of 20, done
    data_dir = (store / "data").resolve()
    reads: list[str] = []

    def recording(fn):
        def wrapper(source, *args, **kwargs):
            if data_dir in Path(str(source)).resolve().parents:
                reads.append(f"{fn.__name__}({source})")
            return fn(source, *args, **kwargs)
        return wrapper

    for name in ("ParquetFile", "read_table", "read_schema", "read_metadata"):
        monkeypatch.setattr(parquet, name, recording(getattr(parquet, name)))
    monkeypatch.setattr(store_module, "sha256_file", recording(store_module.sha256_file))
    again = embed_dataset(source="sample:60", store=str(store), shard_rows=20)
    assert again["shards_done"] == 3 and again["embedded_chunks"] == 0
    assert reads == []


def test_a_run_with_failed_shards_ends_failed_and_says_what_ran_and_how_to_rerun(prefect_api, tmp_path, monkeypatch, caplog):
    """What the UI shows: a Failed flow run whose message gives the count, the cause and the rerun;
    tags and a name that say what ran; per-store artifacts; the plan and each shard in the run log."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from tests.flows import faults
    from wikiembed.errors import ShardsFailed
    from wikiembed.flows.run_reports import artifact_key

    caplog.set_level(logging.INFO, logger="prefect.flow_runs")  # the test session logs only warnings
    faults.install(monkeypatch, poison="Valbrelys")  # a word in shards 0 and 1 of sample:60, not in shard 2
    store = tmp_path / "store"
    state = embed_dataset(source="sample:60", store=str(store), shard_rows=20, return_state=True)
    assert state.is_failed()
    assert state.message.startswith("2/3 shards failed: BackendError: injected"), state.message
    assert f"`wikiembed rerun --store {store} --failed`" in state.message
    assert f"`prefect deployment run rerun-shards/wikiembed-rerun -p store={store} -p shards=failed`" in state.message
    with pytest.raises(ShardsFailed) as ended:
        state.result()
    assert ended.value.summary["shards_done"] == 1 and ended.value.summary["failed_shards"] == [0, 1]

    APILogHandler().flush()  # log records reach the API in batches
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        assert run.name == f"embed sample:60 with all-MiniLM-L6-v2 on local into {store}"
        assert {"model:sentence-transformers/all-MiniLM-L6-v2", "source:sample:60", "backend:local"} <= set(run.tags)
        key = artifact_key("summary", Store(store))
        assert str(store.name) in key and key.startswith("wikiembed-summary-")
        summary = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))[0].data
        assert "- model: `sentence-transformers/all-MiniLM-L6-v2` (revision `" in summary
        assert "- backend: local on cpu" in summary and "- chunking: tokens, chunk_size 256, chunk_overlap 0" in summary, summary
        assert f"wikiembed rerun --store {store} --shards 0,1" in summary
        assert f"prefect deployment run rerun-shards/wikiembed-rerun -p store={store} -p shards=0,1" in summary
        logs = [log.message for log in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))]
    assert any("3 shards, 3 pending (0 done)" in m for m in logs), logs
    assert any(m.startswith("shard 00002 done: ") and "chunks/s" in m for m in logs), logs
    assert any(m.startswith("shard 00001 failed after 1 attempt(s): ") and f"wikiembed rerun --store {store} --shards 1" in m for m in logs), logs

    monkeypatch.undo()
    fixed = rerun_shards(store=str(store), shards="0,1", return_state=True)
    assert fixed.is_completed() and fixed.result()["shards_done"] == 3
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(fixed.state_details.flow_run_id).name == f"re-embed shards 0,1 of {store}"
