"""Whole shards where the store is (`wikiembed.store_ops`), on a local store and on the emulated Volume.

The Volume is `tests/standins/modal_cloud.py`'s: private copies per container, `commit()`
to publish, `reload()` to see others' commits (refused with a file open), last commit wins.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.standins.modal_cloud import CloudDir, EmulatedVolume, ModalCloud
from tests.standins.tei_server import embed_texts, start_server
from wikiembed import store_ops
from wikiembed.backends.factory import BackendOptions
from wikiembed.model import DEFAULT_MODEL
from wikiembed.store import Store


@pytest.fixture(scope="module")
def tei():
    url, server = start_server(model_id=DEFAULT_MODEL, max_client_batch_size=64)
    yield BackendOptions("tei", tei_url=(url,))
    server.stop()


def _settings(store: str, rows: int = 60, shard_rows: int = 30) -> dict:
    return {"source": f"sample:{rows}", "store": store, "shard_rows": shard_rows}


def test_run_shard_writes_data_then_marker_and_a_second_call_redoes_nothing(tmp_path: Path, tei: BackendOptions) -> None:
    planned = store_ops.prepare_store(_settings(str(tmp_path / "store")))
    root, gen = planned.store, planned.gen
    marker = store_ops.run_shard(root, gen, 1, tei)
    store = Store(root, gen)
    assert store.read_done(1) == marker and store.verify_done(1) == marker
    table = pq.read_table(store.data_path(1))
    assert marker.chunks == table.num_rows > 0 and len(marker.model_dump_json()) < 1000
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert np.array_equal(vectors, embed_texts(table.column("text").to_pylist()))
    mtime = store.data_path(1).stat().st_mtime_ns
    assert store_ops.run_shard(root, gen, 1, tei) == marker  # e.g. an input Modal rescheduled after a crash
    assert store.data_path(1).stat().st_mtime_ns == mtime
    view = store_ops.view_store(root)
    assert [s.state for s in view.states] == ["pending", "done"] and view.gen == gen
    assert view.pointers == {"current": gen, "next": None}  # a first generation is the current one from the start

    # A byte flipped with size, mtime and inode kept: the view trusts the stat; a verifying view (what
    # `status --verify` asks a StoreOps container for) rehashes and reports the shard changed.
    data = store.data_path(1)
    st, raw = data.stat(), bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    with open(data, "r+b") as fh:  # in place: the same inode
        fh.write(bytes(raw))
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [s.state for s in store_ops.view_store(root).states] == ["pending", "done"]
    assert [s.state for s in store_ops.view_store(root, verify=True).states] == ["pending", "changed"]


class _Recording(EmulatedVolume):
    """Records what the committed Volume holds after each commit."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        self.history: list[set[str]] = []
        super().__init__(*args, **kwargs)

    def commit(self) -> None:
        super().commit()
        self.history.append({str(p.relative_to(self.cloud.committed)) for p in self.cloud.committed.rglob("*.*")})


def test_volume_contract_data_committed_before_marker_and_seen_only_after_reload(tmp_path: Path, tei: BackendOptions) -> None:
    cloud = CloudDir(tmp_path / "cloud")
    a = _Recording(cloud, tmp_path / "a")
    b = EmulatedVolume(cloud, tmp_path / "b")
    planned = store_ops.prepare_store(_settings(str(a.private / "s")), a)
    gen = planned.gen
    b_view_before = store_ops.view_store(str(b.private / "s"), gen, b)  # b reloads: sees the committed plan
    assert [s.state for s in b_view_before.states] == ["pending", "pending"]

    store_ops.run_shard(str(a.private / "s"), gen, 0, tei, a)
    data, done = f"s/gens/{gen}/data/00000.parquet", f"s/gens/{gen}/_done/00000.json"
    first_with_marker = next(i for i, files in enumerate(a.history) if done in files)
    assert first_with_marker > 0 and data in a.history[first_with_marker - 1]  # data was committed first

    # Without a reload, b's copy still has no trace of a's shard; after one, b sees it done.
    assert not (b.private / done).exists()
    view = store_ops.view_store(str(b.private / "s"), gen, b)
    assert [s.state for s in view.states] == ["done", "pending"]
    assert Store(b.private / "s", gen).verify_done(0) is not None  # b's own copy: another inode, same bytes

    # Uncommitted writes stay private; and a reload with a file open is refused, as on Modal.
    (b.private / "s" / "note.txt").write_text("b's, uncommitted")
    a.reload()
    assert not (a.private / "s" / "note.txt").exists()
    with open(a.private / done):
        with pytest.raises(RuntimeError, match="open files"):
            a.reload()


def test_container_killed_between_data_and_marker_is_rescheduled_on_another(tmp_path: Path, tei: BackendOptions) -> None:
    cloud = CloudDir(tmp_path / "cloud")
    modal_cloud = ModalCloud(cloud, {"TEIShards": asdict(tei)}, max_containers=2)
    cloud.set_faults(kill_after_data=[0])
    try:
        planned = modal_cloud.call("StoreOps", "prepare", (_settings("/store/s"),))
        gen = planned["gen"]
        marker = modal_cloud.call("TEIShards", "run_shard", ("/store/s", gen, 0))
    finally:
        modal_cloud.stop()
    assert modal_cloud.rescheduled == 1 and (cloud.path / "killed-0").exists()
    store = Store(cloud.store("s"), gen)
    assert store.verify_done(0) == marker
    # The first container died after committing the data, before its marker: the second one,
    # mounting the committed state, found data without a marker ("not done") and redid the shard.
    containers = sorted(p.name for p in (cloud.path / "containers").iterdir())
    assert len(containers) == 3  # StoreOps, the killed shard container, its replacement
    assert all(not n.startswith(".") for n in os.listdir(store.dir / "data"))


@pytest.mark.parametrize("pool", ["arrow", "malloc"])
def test_planning_memory_is_handed_back(pool):
    """Many small blocks freed after a step stay with Arrow's pool and malloc until handed back (glibc
    has malloc_trim): `release_free_memory` returns them to the operating system."""
    import platform

    import numpy as np
    import psutil
    import pyarrow as pa

    from wikiembed.memory import _malloc_trim, release_free_memory

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert _malloc_trim() is not None
    elif pool == "malloc":
        pytest.skip("malloc_trim is glibc's")
    process = psutil.Process()
    release_free_memory()
    start = process.memory_info().rss
    if pool == "arrow":  # about 260 MB in blocks of 8 to 56 kB
        held = [pa.array(np.arange(1000 * (1 + i % 7), dtype=np.int64)) for i in range(8_000)]
    else:  # about 190 MB in blocks of 1.6 to 8 kB
        held = [np.ones(200 * (1 + i % 5)) for i in range(40_000)]
    kept = held[::1000]  # a few blocks stay in use among the freed ones
    grown = process.memory_info().rss - start
    del held
    release_free_memory()
    assert process.memory_info().rss - start < 0.3 * grown
    assert kept
