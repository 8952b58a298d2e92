"""The reuse index of a published generation: loaded from the key files kept beside its data files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wikiembed import chunk_keys
from wikiembed.backends.factory import open_backend
from wikiembed.embedding import embed_shard, read_vectors, writer_options
from wikiembed.chunking import chunk_shard
from wikiembed.plan import prepare
from wikiembed.reuse_index import ReuseIndex
from wikiembed.settings import RunSettings
from wikiembed.store import Store


def _done(folder: Path) -> Store:
    prepared = prepare(RunSettings(source="sample:45", store=str(folder / "store"), shard_rows=15))
    backend = open_backend("local", prepared.manifest.model.model_id)
    for k, (start, end) in enumerate(prepared.manifest.plan.shards):
        chunk_shard(prepared.store, k, prepared.manifest)
        embed_shard(prepared.store, k, backend, end - start)
    return prepared.store


@pytest.fixture(scope="module")
def done_store(tmp_path_factory) -> Store:
    """A generation of 3 done shards, embedded with the local engine."""
    return _done(tmp_path_factory.mktemp("reuse"))


@pytest.fixture(scope="module")
def zstd_store(tmp_path_factory) -> Store:
    """The same, its data files written as before `embedding` was kept plain (zstd, as every other column): the
    vectors of such a file are read by row group."""
    from wikiembed import embedding

    real = embedding.writer_options
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(embedding, "writer_options", lambda schema: {**real(schema), "compression": "zstd"})
        store = _done(tmp_path_factory.mktemp("reuse-zstd"))
    group = pq.ParquetFile(store.data_path(0)).metadata.row_group(0)
    assert {group.column(i).path_in_schema: group.column(i).compression for i in range(group.num_columns)}[
        "embedding.list.element"] == "ZSTD"
    return store


def _text_reads(monkeypatch) -> list[Path]:
    """Records every read of a data file's text column alone: what making keys from a file does."""
    reads: list[Path] = []
    real = pq.read_table

    def recording(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if kwargs.get("columns") == ["text"]:
            reads.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(chunk_keys.pq, "read_table", recording)
    return reads


def test_each_data_file_keeps_its_keys_and_the_index_reads_no_old_text(done_store: Store, monkeypatch) -> None:
    for k in range(3):
        texts, _ = read_vectors(done_store.data_path(k))
        marker = done_store.read_done(k)
        kept = chunk_keys.read(done_store.data_path(k), marker.sha256, marker.chunks)
        assert kept is not None and kept.tolist() == chunk_keys.keys(texts).tolist()
    texts, vectors = read_vectors(done_store.data_path(1))
    reads = _text_reads(monkeypatch)
    loaded = ReuseIndex(Store(done_store.root, done_store.gen))
    found_vecs, found = loaded.lookup(texts + ["a chunk text no generation holds"])
    assert reads == [] and loaded.built_from_text == 0  # the keys came from the key files
    assert found.tolist() == [True] * len(texts) + [False]
    assert np.array_equal(found_vecs[: len(texts)], vectors)
    assert ReuseIndex(done_store).save() == 0  # nothing to write: every file has its keys


def test_keys_of_other_bytes_are_not_used_and_save_writes_them_again(done_store: Store, monkeypatch) -> None:
    # Shard 0 re-embedded (a rerun): its data file and marker change, so its kept keys no longer cover it.
    marker = done_store.read_done(0)
    path = chunk_keys.path_for(done_store.data_path(0))
    before = path.read_bytes()
    done_store.mark_done(0, marker.changed(sha256="0" * 64))
    try:
        reads = _text_reads(monkeypatch)
        rebuilt = ReuseIndex(Store(done_store.root, done_store.gen))
        texts, vectors = read_vectors(done_store.data_path(0))
        found_vecs, found = rebuilt.lookup(texts)
        assert found.all() and np.array_equal(found_vecs, vectors)
        assert reads == [done_store.data_path(0)] and rebuilt.built_from_text == 1  # that file's keys from its text
        assert ReuseIndex(done_store).save() == 1  # and kept again, for its new sha256
        assert chunk_keys.read(done_store.data_path(0), "0" * 64, marker.chunks) is not None
    finally:
        done_store.mark_done(0, marker)
        path.write_bytes(before)


def test_a_damaged_key_file_is_made_again_from_the_text(done_store: Store) -> None:
    path = chunk_keys.path_for(done_store.data_path(2))
    before = path.read_bytes()
    path.write_bytes(b"not an npz")
    try:
        texts, vectors = read_vectors(done_store.data_path(2))
        found_vecs, found = ReuseIndex(done_store).lookup(texts)
        assert found.all() and np.array_equal(found_vecs, vectors)
        assert ReuseIndex(done_store).save() == 1
        assert path.read_bytes() == before  # the same keys, for the same file
    finally:
        path.write_bytes(before)


def test_saving_removes_the_older_whole_generation_index_file(done_store: Store) -> None:
    legacy = done_store.dir / ReuseIndex.LEGACY
    legacy.write_bytes(b"an index of the older layout")
    files = {p: p.stat().st_mtime_ns for p in (done_store.dir / chunk_keys.KEYS_DIR).iterdir()}
    assert ReuseIndex(Store(done_store.root, done_store.gen)).save() == 0  # a resumed run's download step
    assert not legacy.exists()
    assert {p: p.stat().st_mtime_ns for p in (done_store.dir / chunk_keys.KEYS_DIR).iterdir()} == files


def _row_group_reads(monkeypatch) -> list[tuple[int, tuple]]:
    """Records every row group read from here on: (group, columns)."""
    read: list[tuple[int, tuple]] = []
    real = pq.ParquetFile.read_row_group

    def recording(self, group, columns=None, **kwargs):  # noqa: ANN001, ANN003
        read.append((group, tuple(columns or ())))
        return real(self, group, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", recording)
    return read


def _every_vector(store: Store) -> tuple[list[str], np.ndarray]:
    """The texts and vectors of the store's three data files, file after file (a plain read of each)."""
    texts, vectors = [], []
    for shard in range(3):
        t, v = read_vectors(store.data_path(shard))
        texts += t
        vectors.append(v)
    return texts, np.concatenate(vectors)


def test_vectors_are_read_by_row_and_match_the_files(done_store: Store, monkeypatch) -> None:
    """In a data file that keeps `embedding` plain, a lookup reads the vectors it finds by their rows: no row group."""
    texts, every = _every_vector(done_store)
    read = _row_group_reads(monkeypatch)
    order = np.random.default_rng(2).permutation(len(texts))
    found_vecs, found = ReuseIndex(Store(done_store.root, done_store.gen)).lookup([texts[i] for i in order] + ["no such chunk"])
    assert found[:-1].all() and not found[-1]
    assert np.array_equal(found_vecs[:-1], every[order]) and read == []


def test_vectors_come_from_the_row_groups_that_hold_them(zstd_store: Store, monkeypatch) -> None:
    """In a file whose `embedding` is compressed, a lookup reads the embedding column of only the row groups of the
    rows it finds, each once."""
    read = _row_group_reads(monkeypatch)
    texts, vectors = read_vectors(zstd_store.data_path(1))
    index = ReuseIndex(Store(zstd_store.root, zstd_store.gen))
    found_vecs, found = index.lookup(texts[:2] + texts[:1])
    assert found.all() and np.array_equal(found_vecs, vectors[[0, 1, 0]])
    assert read == [(0, ("embedding",))]


def test_a_lookup_over_several_row_groups_reads_each_once_and_matches_the_files(zstd_store: Store, monkeypatch) -> None:
    """A lookup over every file gives the vectors a plain read of each file gives, each row group read once."""
    texts, every = _every_vector(zstd_store)
    index = ReuseIndex(Store(zstd_store.root, zstd_store.gen))
    read = _row_group_reads(monkeypatch)
    order = np.random.default_rng(1).permutation(len(texts))
    found_vecs, found = index.lookup([texts[i] for i in order] + ["no such chunk"])
    assert found[:-1].all() and not found[-1]
    assert np.array_equal(found_vecs[:-1], every[order])
    groups = sum(pq.ParquetFile(zstd_store.data_path(k)).metadata.num_row_groups for k in range(3))
    assert len(read) == groups  # each of the three files' groups once


def test_data_files_keep_float_vectors_without_a_dictionary(done_store: Store) -> None:
    """A dictionary is tried for every column but float vectors, whose values hardly repeat."""
    meta = pq.ParquetFile(done_store.data_path(0)).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    assert "RLE_DICTIONARY" not in encodings["embedding.list.element"]
    assert "RLE_DICTIONARY" in encodings["id"]
    schema = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32(), 4)), ("embedding_int8", pa.list_(pa.int8(), 4)),
                        ("embedding_f16", pa.list_(pa.float16(), 4))])
    assert writer_options(schema)["use_dictionary"] == ["id", "embedding_int8.list.element"]
