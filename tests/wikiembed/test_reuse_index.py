"""The reuse index of a published generation: built once from its data files, saved, loaded by others."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from wikiembed import plan
from wikiembed.backends.factory import open_backend
from wikiembed.embedding import embed_shard, read_vectors
from wikiembed.chunking import chunk_shard
from wikiembed.plan import prepare
from wikiembed.reuse_index import ReuseIndex
from wikiembed.settings import RunSettings
from wikiembed.store import Store


@pytest.fixture(scope="module")
def done_store(tmp_path_factory) -> Store:
    """A generation of 3 done shards, embedded with the local engine."""
    prepared = prepare(RunSettings(source="sample:45", store=str(tmp_path_factory.mktemp("reuse") / "store"), shard_rows=15))
    backend = open_backend("local", prepared.manifest.model.model_id)
    for k, (start, end) in enumerate(prepared.manifest.plan.shards):
        chunk_shard(prepared.store, k, prepared.manifest)
        embed_shard(prepared.store, k, backend, end - start)
    return prepared.store


def _text_reads(monkeypatch) -> list[Path]:
    """Records every read of a data file's text column alone: what building the keys does."""
    reads: list[Path] = []
    real = pq.read_table

    def recording(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if kwargs.get("columns") == ["text"]:
            reads.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(plan.pq, "read_table", recording)
    return reads


def test_a_saved_index_is_loaded_without_reading_old_texts_and_finds_the_same_vectors(done_store: Store, monkeypatch) -> None:
    texts, vectors = read_vectors(done_store.data_path(1))
    ReuseIndex(done_store).save()
    assert (done_store.dir / ReuseIndex.SAVED).exists()

    reads = _text_reads(monkeypatch)
    loaded = ReuseIndex(Store(done_store.root, done_store.gen))
    found_vecs, found = loaded.lookup(texts + ["a chunk text no generation holds"])
    assert reads == []  # the keys came from the saved index
    assert found.tolist() == [True] * len(texts) + [False]
    assert np.array_equal(found_vecs[: len(texts)], vectors)


def test_a_saved_index_is_stale_once_a_shard_is_re_embedded(done_store: Store, monkeypatch) -> None:
    ReuseIndex(done_store).save()
    saved = (done_store.dir / ReuseIndex.SAVED).read_bytes()
    # Shard 0 re-embedded (a rerun): its data file and marker change, so the saved keys no longer cover it.
    marker = done_store.read_done(0)
    done_store.mark_done(0, marker.changed(sha256="0" * 64))
    try:
        reads = _text_reads(monkeypatch)
        rebuilt = ReuseIndex(Store(done_store.root, done_store.gen))
        rebuilt.save()
        assert len(reads) == 3  # rebuilt from every data file
        assert (done_store.dir / ReuseIndex.SAVED).read_bytes() != saved  # and saved again, with the new fingerprint
    finally:
        done_store.mark_done(0, marker)


def test_a_damaged_saved_index_is_rebuilt(done_store: Store) -> None:
    (done_store.dir / ReuseIndex.SAVED).write_bytes(b"not an npz")
    texts, _ = read_vectors(done_store.data_path(2))
    _, found = ReuseIndex(done_store).lookup(texts)
    assert found.all()


def test_saving_an_index_already_saved_for_the_same_data_reads_and_writes_nothing(done_store: Store, monkeypatch) -> None:
    ReuseIndex(done_store).save()
    path = done_store.dir / ReuseIndex.SAVED
    before = path.stat().st_mtime_ns, path.read_bytes()
    reads = _text_reads(monkeypatch)
    again = ReuseIndex(Store(done_store.root, done_store.gen))
    again.save()  # a resumed run's download step
    assert reads == [] and (path.stat().st_mtime_ns, path.read_bytes()) == before
    assert again.lookup([pq.read_table(done_store.data_path(0)).column("text")[0].as_py()])[1].tolist() == [True]
