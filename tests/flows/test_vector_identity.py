"""What the store's vectors are: the model's weights are its identity, kinds of vectors never mix,
a backend answering the wrong dimension fails its shard, and the figures reported are measured.

Real Prefect API, real bundled model (copied where a test changes its files); the TEI
stand-in where a second backend is needed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import wikiembed.backends.factory as factory
from wikiembed.errors import BackendError, ShardsFailed, StoreError, TransientBackendError
from wikiembed.flows.embed_dataset import embed_dataset, rerun_shards
from wikiembed.model import DEFAULT_MODEL, model_info
from wikiembed.store import Store
from wikiembed.tasks.embed import EMBED_RETRIES
from tests.flows import faults
from tests.flows.conftest import copy_store
from tests.standins.tei_server import start_server

SOURCE = "sample:30"  # two shards of 15 articles
SHARD_ROWS = 15


def _vectors(store: Path) -> np.ndarray:
    t = pq.read_table(store / "data").sort_by([("id", "ascending"), ("chunk_index", "ascending")])
    return np.array(t.column("embedding").to_pylist(), dtype=np.float32)


def _marker(store: Path, shard: int) -> dict:
    return json.loads((store / "_done" / f"{shard:05d}.json").read_text())


@pytest.fixture()
def model_copy(tmp_path: Path) -> Path:
    """The bundled all-MiniLM-L6-v2, copied so a test may change its files."""
    dest = tmp_path / "minilm"
    shutil.copytree(model_info(DEFAULT_MODEL).path, dest)
    return dest


def _perturb_weights(model: Path) -> None:
    """What a fine-tune saved over the same folder does: only the weights change."""
    from safetensors.numpy import load_file, save_file

    path = model / "model.safetensors"
    tensors = load_file(path)
    name = next(n for n in tensors if "word_embeddings" in n)
    rng = np.random.default_rng(0)
    tensors[name] = (tensors[name] + rng.normal(0, 0.05, tensors[name].shape)).astype(tensors[name].dtype)
    save_file(tensors, path, metadata={"format": "pt"})


def test_new_weights_in_the_same_folder_reembed_everything(prefect_api, model_copy, tmp_path):
    store = tmp_path / "store"
    first = embed_dataset(source=SOURCE, store=str(store), model=str(model_copy), shard_rows=SHARD_ROWS)
    assert first["shards_done"] == 2 and first["embedded_chunks"] == first["chunks"]
    old_revision = json.loads((store / "manifest.json").read_text())["model"]["revision"]
    old_vectors = _vectors(store)

    _perturb_weights(model_copy)
    second = embed_dataset(source=SOURCE, store=str(store), model=str(model_copy), shard_rows=SHARD_ROWS)

    assert second["shards_done"] == 2
    assert second["embedded_chunks"] == second["chunks"] == first["chunks"] and second["reused_chunks"] == 0
    manifest = json.loads((store / "manifest.json").read_text())
    new_revision = manifest["model"]["revision"]
    assert new_revision != old_revision
    card = (store / "README.md").read_text()
    assert f"revision `{new_revision}`" in card and old_revision not in card
    assert _marker(store, 0)["vectors"]["revision"] == new_revision
    assert not np.allclose(_vectors(store), old_vectors, atol=1e-3)  # the new weights made them
    assert len(list((store / "gens").iterdir())) == 1  # the old generation is gone once the new one is published
    # and nothing changed since: a no-op
    third = embed_dataset(source=SOURCE, store=str(store), model=str(model_copy), shard_rows=SHARD_ROWS)
    assert third["embedded_chunks"] == 0


def test_weights_swapped_during_a_run_never_fill_one_generation_with_two_kinds(prefect_api, model_copy, tmp_path, monkeypatch):
    """The model's files replaced after two shards are done: the shards after it are refused (the
    generation's kind is pinned by its first shard), nothing of the new weights is marked done, and
    status, export and a repeat run all see the store as unfinished."""
    from wikiembed.executors.in_process import InProcess
    from wikiembed.flows.cli import main as cli_main

    real, finished = InProcess.run_shard, []

    def run_then_swap(self, job):  # noqa: ANN001, ANN202
        marker = real(self, job)
        finished.append(job.shard)
        if len(finished) == 2:
            _perturb_weights(model_copy)
        return marker

    monkeypatch.setattr(InProcess, "run_shard", run_then_swap)
    store = tmp_path / "store"
    with pytest.raises(ShardsFailed) as ended:
        embed_dataset(source="sample:40", store=str(store), model=str(model_copy), shard_rows=10, compute={"concurrency": 1})
    summary = ended.value.summary
    assert summary["shards_done"] == 2 and summary["failed_shards"] == [2, 3]
    gen_dir = Store(store, summary["generation"]).dir
    manifest = json.loads((gen_dir / "manifest.json").read_text())
    revisions = {json.loads(p.read_text())["vectors"]["revision"] for p in (gen_dir / "_done").glob("*.json")}
    assert revisions == {manifest["model"]["revision"]} == {manifest["vectors"]["revision"]}
    failed = json.loads((gen_dir / "_failed" / "00002.json").read_text())["error"]
    assert "new --store" in failed or "generation" in failed

    # A marker written by another revision vouches for nothing.
    monkeypatch.setattr(InProcess, "run_shard", real)
    foreign = json.loads((gen_dir / "_done" / "00000.json").read_text())
    (gen_dir / "_done" / "00000.json").write_text(json.dumps({**foreign, "vectors": {**foreign["vectors"], "revision": "sha256:0000"}}))
    states = {s.shard: s for s in Store(store, summary["generation"]).states()}
    assert states[0].state == "changed" and "sha256:0000" in states[0].error
    assert cli_main(["status", "--store", str(gen_dir), "--verify"]) == 1
    assert cli_main(["export", "--store", str(gen_dir), "--to", str(tmp_path / "out")]) != 0
    assert not (tmp_path / "out" / "data").exists()
    # One of a newer layout is refused by name: read as "not done", a run would embed its shard again.
    newer = gen_dir / "_done" / "00001.json"
    newer.write_text(json.dumps({**json.loads(newer.read_text()), "format": 99}))
    with pytest.raises(StoreError, match="00001.json: a _done marker of layout 99, written by a newer wikiembed"):
        Store(store, summary["generation"]).states()
    assert cli_main(["status", "--store", str(gen_dir)]) == 2


def test_vectors_of_another_kind_are_refused_and_kinds_that_agree_share_a_store(prefect_api, model_copy, sample_store, tmp_path):
    # A model without a Normalize module: the local engine leaves its vectors unnormalized, TEI normalizes.
    modules = json.loads((model_copy / "modules.json").read_text())
    (model_copy / "modules.json").write_text(json.dumps([m for m in modules if not m["type"].endswith("Normalize")]))
    store = tmp_path / "unnormalized"
    embed_dataset(source=SOURCE, store=str(store), model=str(model_copy), shard_rows=SHARD_ROWS)
    assert _marker(store, 0)["vectors"]["normalize"] is False
    assert json.loads((store / "manifest.json").read_text())["vectors"]["normalize"] is False

    url, tei = start_server(model_id=str(model_copy), dim=384)
    try:
        Store(store).forget(1)
        with pytest.raises(ShardsFailed) as ended:
            embed_dataset(source=SOURCE, store=str(store), model=str(model_copy), shard_rows=SHARD_ROWS,
                          backend="tei", compute={"tei_url": [url]})
        refused = ended.value.summary
        # Probes only (one input each: the flow's up-front check, then the shard worker's client); no chunk was sent.
        assert refused["failed_shards"] == [1] and set(tei.stats.batch_sizes) == {1} and len(tei.stats.batch_sizes) <= 3
        failed = json.loads((store / "_failed" / "00001.json").read_text())
        assert "not normalized" in failed["error"] and "L2-normalized" in failed["error"]
        assert "new --store" in failed["error"] and failed["attempts"] == 1
        assert not (store / "data" / "00001.parquet").exists()
        # the store's own settings finish it
        fixed = rerun_shards(store=str(store), shards="failed")
        assert fixed["shards_failed"] == 0 and _marker(store, 1)["vectors"]["backend"] == "local"

        # The bundled model normalizes, as TEI does, with the same pooling: the two may share a store.
        tei.config.model_id = DEFAULT_MODEL
        shared = copy_store(sample_store[0], tmp_path / "shared")  # sample:60 in 3 shards of 20, by the local engine
        Store(shared).forget(1)
        mixed = embed_dataset(source="sample:60", store=str(shared), shard_rows=20, backend="tei", compute={"tei_url": [url]})
        assert mixed["shards_done"] == 3 and mixed["shards_failed"] == 0
        assert [_marker(shared, k)["vectors"]["backend"] for k in (0, 1)] == ["local", "tei"]
    finally:
        tei.stop()


def test_a_backend_answering_the_wrong_dimension_fails_its_shards(prefect_api, tmp_path, monkeypatch):
    url, tei = start_server(model_id=DEFAULT_MODEL, dim=768)  # a 768-wide answer for a 384-wide model
    store = tmp_path / "store"
    try:
        with pytest.raises(ShardsFailed) as ended:
            embed_dataset(source=SOURCE, store=str(store), shard_rows=SHARD_ROWS, backend="tei", compute={"tei_url": [url]})
        summary = ended.value.summary
        assert summary["failed_shards"] == [0, 1] and summary["shards_done"] == 0
        assert not list((store / "_done").glob("*.json")) and not list((store / "data").glob("*.parquet"))
        for k in (0, 1):
            failed = json.loads((store / "_failed" / f"{k:05d}.json").read_text())
            assert "BackendError" in failed["error"] and "768" in failed["error"] and "384" in failed["error"]
            assert failed["attempts"] == 1  # a permanent backend error is not retried

        tei.config.dim = 384  # the fix; `rerun` is a new process, with no backend opened yet
        monkeypatch.setattr(factory, "_BACKENDS", {})
        fixed = rerun_shards(store=str(store), shards="failed")
        assert fixed["shards_done"] == 2 and fixed["shards_failed"] == 0
    finally:
        tei.stop()


class _AlwaysTransient:
    """A backend that fails every call with an error worth retrying."""

    def __init__(self, inner) -> None:
        self.model_id, self.dim, self.max_tokens, self.kind = inner.model_id, inner.dim, inner.max_tokens, inner.kind
        self.calls = 0

    def embed(self, texts, prompt=""):
        self.calls += 1
        raise TransientBackendError("injected: 503 model is loading")

    def close(self) -> None:
        pass


def test_attempts_and_retries_are_the_ones_that_happened(prefect_api, tmp_path, monkeypatch):
    # A permanent error is tried once, and recorded as one attempt.
    faulty = faults.install(monkeypatch, poison=" ")  # every text has a space: every call is rejected
    store = tmp_path / "store"
    with pytest.raises(ShardsFailed) as ended:
        embed_dataset(source=SOURCE, store=str(store), shard_rows=SHARD_ROWS)
    summary = ended.value.summary
    assert summary["failed_shards"] == [0, 1] and summary["retries"] == 0
    assert faulty.calls == 3  # the estimate's calibration (refused too: no estimate), then one call a shard
    assert [s["attempts"] for s in map(json.loads, (p.read_text() for p in sorted((store / "_failed").iterdir())))] == [1, 1]

    # A transient error is retried EMBED_RETRIES times: that many retries, one more attempt.
    flaky = _AlwaysTransient(faulty.inner)
    monkeypatch.setattr("wikiembed.backends.factory.open_backend", lambda **_: flaky)
    with pytest.raises(ShardsFailed) as ended:
        rerun_shards(store=str(store), shards=[0])
    again = ended.value.summary
    assert flaky.calls == EMBED_RETRIES + 1
    assert again["retries"] == EMBED_RETRIES
    assert json.loads((store / "_failed" / "00000.json").read_text())["attempts"] == 1 + EMBED_RETRIES + 1


def test_request_retries_count_this_run_only(prefect_api, tmp_path):
    url, tei = start_server(model_id=DEFAULT_MODEL, error_rate=0.3, error_statuses=(503,), seed=1)
    store = tmp_path / "store"
    try:
        first = embed_dataset(source=SOURCE, store=str(store), shard_rows=SHARD_ROWS, backend="tei", compute={"tei_url": [url]})
        answered_503 = tei.stats.statuses.get(("/v1/embeddings", 503), 0)
        assert first["shards_done"] == 2 and answered_503 > 0 and first["retries"] == answered_503
        tei.faults = type(tei.faults)()  # healthy from now on
        Store(store).forget(1)
        second = embed_dataset(source=SOURCE, store=str(store), shard_rows=SHARD_ROWS, backend="tei", compute={"tei_url": [url]})
        assert second["embedded_chunks"] > 0 and second["retries"] == 0
    finally:
        tei.stop()
