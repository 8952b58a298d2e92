"""Store invariants on real files: markers are the truth, temp files never count, locks die with their process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from wikiembed.backends.base import VectorKind
from wikiembed.embedding import embed_shard, read_vectors
from wikiembed.errors import StoreError
from wikiembed.chunking import CHUNK_SCHEMA, write_parquet_atomic
from wikiembed.records import CompactRecord, Manifest, ModelRecord, ShardPlan
from wikiembed.store import Store


class HashBackend:
    """A deterministic backend for store-level tests (the real engine is tested elsewhere)."""

    model_id, dim, max_tokens = "hash-test", 8, 512
    kind = VectorKind("local", "hash-test", "r1", "mean", True, "float32")

    def embed(self, texts, prompt=""):
        out = np.array([[(hash(t) >> (4 * i)) % 97 + 1 for i in range(self.dim)] for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def close(self):
        pass


def _store(tmp_path: Path, shards: int = 3) -> Store:
    root = Store(tmp_path / "store", "g1")
    root.ensure_writable()
    root.set_pointer("current", "g1")
    root.write_manifest(Manifest(plan=ShardPlan(shards=[(i * 2, i * 2 + 2) for i in range(shards)], rows=shards * 2, shard_rows=2),
                                 model=ModelRecord(model_id="hash-test", revision="test", dim=8), chunking={"chunker": "chars"}))
    for k in range(shards):
        rows = [
            {"id": str(k), "url": "", "title": "", "chunk_index": i, "char_start": 0, "char_end": 5, "text": f"s{k}c{i}"}
            for i in range(5)
        ]
        write_parquet_atomic(pa.Table.from_pylist(rows, CHUNK_SCHEMA), root.chunks_path(k))
    return root


def test_done_means_marker_matches_file(tmp_path):
    store = _store(tmp_path)
    marker = embed_shard(store, 0, HashBackend(), rows=2)
    assert store.read_done(0) == marker and marker.chunks == 5
    texts, vectors = read_vectors(store.data_path(0))
    assert texts == [f"s0c{i}" for i in range(5)] and vectors.shape == (5, 8)
    # top-level links go through `current`
    assert (store.root / "data" / "00000.parquet").exists() and (store.root / "_done" / "00000.json").exists()
    # a corrupted data file (same size, new bytes) is "not done"
    data = store.data_path(0)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert store.read_done(0) is None
    # a marker whose file is gone is "not done"
    embed_shard(store, 1, HashBackend(), rows=2)
    store.data_path(1).unlink()
    assert store.read_done(1) is None
    assert [s.state for s in store.states()] == ["changed", "changed", "pending"]  # marked done, no longer matching


def test_marker_layouts_old_ones_read_as_the_first_a_newer_one_is_refused_by_name(tmp_path):
    store = _store(tmp_path)
    marker = embed_shard(store, 0, HashBackend(), rows=2)
    raw = json.loads(store.done_path(0).read_text())
    assert raw["format"] == 1 and marker.format == 1
    # Written before markers carried their layout: read as the first, and still done.
    store.done_path(0).write_text(json.dumps({k: v for k, v in raw.items() if k != "format"}))
    assert store.read_done(0) == marker and store.states()[0].state == "done"
    # A newer layout: refused with the upgrade, naming the file, never read as "changed" (and embedded again).
    store.done_path(0).write_text(json.dumps({**raw, "format": 2}))
    for read in (store.states, lambda: store.read_done(0), lambda: store.verify_done(0)):
        with pytest.raises(StoreError, match=r"_done/00000\.json: a _done marker of layout 2, written by a newer wikiembed"):
            read()
    # Not a layout at all (or a damaged marker): vouches for nothing, as before.
    store.done_path(0).write_text(json.dumps({**raw, "format": 0}))
    assert store.read_done(0, store.read_manifest()) is None and store.states()[0].state == "changed"
    store.done_path(0).write_text(json.dumps({**raw, "format": "two"}))
    assert store.read_done(0, store.read_manifest()) is None and store.states()[0].state == "changed"


def test_failed_marker_counts_attempts_and_clears_on_success(tmp_path):
    store = _store(tmp_path)
    store.mark_failed(2, "boom", attempts=4)
    store.mark_failed(2, "boom again", attempts=4)
    state = store.states()[2]
    assert state.state == "failed" and state.attempts == 8 and "boom again" in state.error
    embed_shard(store, 2, HashBackend(), rows=2)
    assert store.states()[2].state == "done" and not store.failed_path(2).exists()


def test_unwritable_data_path_fails_cleanly_and_keeps_done_shards(tmp_path):
    store = _store(tmp_path)
    embed_shard(store, 0, HashBackend(), rows=2)
    store.data_path(1).mkdir()  # something in the way that even root cannot replace with a file
    with pytest.raises(StoreError, match=str(store.data_path(1))):
        embed_shard(store, 1, HashBackend(), rows=2)
    assert store.read_done(0) is not None
    assert not [p for p in (store.dir / "data").iterdir() if p.name.startswith(".")]  # no temp left


def test_temp_files_of_dead_processes_are_cleaned(tmp_path):
    store = _store(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = store.dir / "data" / f".00000.parquet.tmp-{dead.stdout.strip()}"
    stale.write_bytes(b"partial")
    assert store.clean_temp_files() == 1 and not stale.exists()


def test_lock_refuses_a_second_run_and_dies_with_sigkill(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from wikiembed.store import Store; import time\nwith Store({str(root)!r}).lock():\n print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(StoreError, match=f"pid {holder.pid}") as busy:
        with Store(root).lock():
            pass
    assert "--wait" not in str(busy.value)  # no option the CLI does not have
    holder.kill()  # SIGKILL: no cleanup code runs
    holder.wait()
    started = time.monotonic()
    with Store(root).lock(wait_s=5):
        assert time.monotonic() - started < 5


def test_reading_a_store_that_was_never_started(tmp_path):
    with pytest.raises(StoreError, match="wikiembed run"):
        Store(tmp_path).read_manifest()


class BrokenBackend(HashBackend):
    """Answers vectors of the right shape that are not what the card promises."""

    def __init__(self, scale: float, normalize: bool = True) -> None:
        self.scale = scale
        self.kind = VectorKind("local", "hash-test", "r1", "mean", normalize, "float32")

    def embed(self, texts, prompt=""):
        return super().embed(texts) * self.scale


@pytest.mark.parametrize("scale, needle", [(0.0, "all-zero"), (7.0, "norm 7")])
def test_vectors_unlike_the_promise_are_never_marked_done(tmp_path, scale, needle):
    from wikiembed.errors import BackendError

    store = _store(tmp_path)
    with pytest.raises(BackendError, match=needle):
        embed_shard(store, 0, BrokenBackend(scale), rows=2)
    assert store.read_done(0) is None and not store.data_path(0).exists()
    assert not [p for p in (store.dir / "data").iterdir() if p.name.startswith(".")]  # no temp left
    # a model that does not normalize may answer any norm, but never zeros
    assert embed_shard(store, 1, BrokenBackend(7.0, normalize=False), rows=2).chunks == 5
    with pytest.raises(BackendError, match="all-zero"):
        embed_shard(store, 2, BrokenBackend(0.0, normalize=False), rows=2)


def test_verify_finds_damage_that_kept_size_mtime_and_inode(tmp_path):
    store = _store(tmp_path)
    for k in range(3):
        embed_shard(store, k, HashBackend(), rows=2)
    data = store.data_path(1)
    st = data.stat()
    with data.open("r+b") as fh:  # flip one byte in place: same size and inode
        fh.seek(st.st_size // 2)
        byte = fh.read(1)
        fh.seek(st.st_size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime
    assert [s.state for s in store.states()] == ["done", "done", "done"]  # the stat shortcut trusts it
    states = store.states(verify=True)
    assert [s.state for s in states] == ["done", "changed", "done"]


def test_a_store_path_that_is_a_file_or_a_foreign_folder_is_refused_untouched(tmp_path):
    from wikiembed.errors import InputError

    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    with pytest.raises(InputError, match="is a file"):
        Store(afile).lock()
    theirs = tmp_path / "dataset"
    (theirs / "data").mkdir(parents=True)
    (theirs / "README.md").write_text("their card")
    before = sorted(p.relative_to(theirs) for p in theirs.rglob("*"))
    with pytest.raises(InputError, match="data, README.md"):
        Store(theirs).check_root()
    assert sorted(p.relative_to(theirs) for p in theirs.rglob("*")) == before


def test_a_damaged_store_is_not_called_never_started(tmp_path):
    store = _store(tmp_path)
    (store.root / "current").unlink()
    with pytest.raises(StoreError, match=r"no link `current`.*generations g1 are there.*run the same|Run the same"):
        Store(store.root).read_manifest()
    store.set_pointer("current", "g1")
    store.manifest_path.unlink()
    with pytest.raises(StoreError, match="gens/g1/manifest.json is missing.*run the same"):
        Store(store.root).read_manifest()


def _raw_manifest(store: Store) -> dict:
    return json.loads(store.manifest_path.read_text())


def test_an_older_manifest_opens_with_defaults_and_keeps_fields_it_does_not_know(tmp_path):
    store = _store(tmp_path)
    raw = _raw_manifest(store)
    # As an early wikiembed wrote it: no prompts, no shape, no compact forms, no kind of vectors; and a
    # field from a later version this one does not know.
    raw["model"] = {"model_id": "hash-test", "revision": "r1", "dim": 8}
    for key in ("compact", "vectors", "versions", "skipped"):
        raw.pop(key, None)
    raw["written_by_a_later_version"] = {"keep": True}
    # Nested sections keep theirs too.
    raw["source"] = {"spec": "sample:6", "fingerprint": "f" * 64, "a_later_source_field": 1}
    raw["chunking"] = {"chunker": "tokens", "chunk_size": 128, "chunk_overlap": 0, "a_later_chunking_field": "x"}
    store.manifest_path.write_text(json.dumps(raw))
    manifest = store.read_manifest()
    assert manifest.model.document_prompt == "" and manifest.model.shape is None and manifest.compact is None
    assert manifest.vectors is None and manifest.skipped == {} and len(manifest.plan) == 3 and manifest.plan.rows_of(1) == 2
    assert (manifest.source.spec, manifest.source.kind, manifest.chunking.chunk_size) == ("sample:6", None, 128)
    # A kind of vectors as an older version wrote it: no prompt, Dense or truncation fields; nulls read as absent.
    old_kind = {"backend": "local", "model": "hash-test", "revision": "r1", "pooling": "mean", "normalize": True,
                "dtype": "float32", "truncate_dim": None, "a_later_kind_field": 3}
    store.write_manifest(manifest.changed(vectors=old_kind,
                                          compact=CompactRecord(dimensions=[4], precisions=["int8"], int8={"chunks": 1})))
    again = _raw_manifest(store)
    assert again["written_by_a_later_version"] == {"keep": True} and again["vectors"]["a_later_kind_field"] == 3
    kind = store.read_manifest().vectors
    assert (kind.prompt, kind.include_prompt, kind.dense, kind.truncate_dim) == ("", True, (), None)
    assert kind.agrees_with(VectorKind("tei", "hash-test", "r1", "mean", True, "bfloat16"))  # backend, dtype: provenance
    assert again["source"]["a_later_source_field"] == 1 and again["chunking"]["a_later_chunking_field"] == "x"
    assert again["compact"] == {"dimensions": [4], "precisions": ["int8"], "int8": {"chunks": 1}}
    assert store.read_manifest().int8 == {"chunks": 1}


def test_a_manifest_of_a_newer_layout_is_refused_with_the_upgrade(tmp_path):
    store = _store(tmp_path)
    raw = _raw_manifest(store)
    store.manifest_path.write_text(json.dumps({**raw, "format": 2}))
    with pytest.raises(StoreError, match=r"layout 2, made by a newer wikiembed.*upgrade wikiembed"):
        store.read_manifest()


def test_a_damaged_manifest_names_the_field(tmp_path):
    store = _store(tmp_path)
    raw = _raw_manifest(store)
    raw["plan"]["shards"] = "not a list"
    store.manifest_path.write_text(json.dumps(raw))
    with pytest.raises(StoreError, match=r"damaged at plan\.shards"):
        store.read_manifest()
