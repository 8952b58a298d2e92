"""`--backend tei`: every shard runs whole in a worker process of the flow's machine.

The TEI servers are the stand-in (`tests/standins/tei_server.py`); the flow, Prefect, the
worker processes (`wikiembed.shard_workers`), the shard function and the store are real.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.standins.tei_server import embed_texts, start_server
from wikiembed.backends.factory import BackendOptions
from wikiembed import shard_workers, store_ops
from wikiembed.errors import BackendError
from wikiembed.model import DEFAULT_MODEL
from wikiembed.store import Store


@pytest.fixture(scope="module")
def tei():
    url, server = start_server(model_id=DEFAULT_MODEL, max_client_batch_size=16)
    yield url
    server.stop()


def _data(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Store(store).dir.joinpath("data").glob("*.parquet"))}


def _assert_done_and_exact(store: Path, shards: int) -> None:
    s = Store(store)
    assert all(s.verify_done(k) is not None for k in range(shards))
    table = pq.read_table(s.dir / "data")
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert np.array_equal(vectors, embed_texts(table.column("text").to_pylist()))


def test_shards_run_in_worker_processes_with_the_in_process_result(prefect_api, tmp_path: Path, tei: str) -> None:
    from wikiembed.flows.embed_dataset import embed_dataset

    opts = BackendOptions("tei", tei_url=(tei,))
    pooled = store_ops.prepare_store({"source": "sample:120", "store": str(tmp_path / "pooled"), "shard_rows": 30})
    try:
        with ThreadPoolExecutor(4) as threads:
            markers = list(threads.map(lambda k: shard_workers.run(pooled.store, pooled.gen, k, opts, workers=2), range(4)))
    finally:
        shard_workers.release()
    pids = {m.worker_pid for m in markers}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2

    # The same shard function in this process, and the whole flow with its workers: the same bytes.
    alone = store_ops.prepare_store({"source": "sample:120", "store": str(tmp_path / "alone"), "shard_rows": 30})
    for k in range(4):
        store_ops.run_shard(alone.store, alone.gen, k, opts)
    summary = embed_dataset(source="sample:120", store=str(tmp_path / "flow"), shard_rows=30, backend="tei",
                            compute={"tei_url": [tei], "shard_workers": 2})  # fmt: skip
    assert summary["shards_done"] == 4 and summary["embedded_chunks"] == sum(m.chunks for m in markers)
    assert _data(tmp_path / "pooled") == _data(tmp_path / "alone") == _data(tmp_path / "flow")
    _assert_done_and_exact(tmp_path / "flow", 4)


def test_a_worker_killed_mid_shard_leaves_no_partial_file_and_the_shard_is_redone(prefect_api, tmp_path: Path) -> None:
    from wikiembed.flows.embed_dataset import embed_dataset

    # Slow answers keep a worker inside its shard's data file long enough to kill it there.
    url, server = start_server(model_id=DEFAULT_MODEL, max_client_batch_size=8, latency_s=0.2)
    store = tmp_path / "store"
    killed: list[tuple[str, int]] = []

    def kill_the_first_writer() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for tmp in store.glob("gens/*/data/.*.tmp-*"):
                pid = int(tmp.name.rsplit("-", 1)[-1])
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed.append((tmp.name, pid))
                    return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_the_first_writer, daemon=True)
    watcher.start()
    try:
        summary = embed_dataset(source="sample:120", store=str(store), shard_rows=30, backend="tei",
                                compute={"tei_url": [url], "shard_workers": 2})  # fmt: skip
    finally:
        server.stop()
    watcher.join(timeout=1)
    assert killed, "no worker was caught writing a shard"
    assert summary["shards_done"] == summary["shards_total"] == 4 and summary["retries"] >= 1
    assert not list(store.rglob(".*.tmp-*")), "a partial file was left behind"
    _assert_done_and_exact(store, 4)


def test_a_bad_tei_url_fails_before_any_shard(prefect_api, tmp_path: Path) -> None:
    from wikiembed.flows.embed_dataset import embed_dataset

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(BackendError, match=rf"{url}.*cannot be reached"):
        embed_dataset(source="sample:80", store=str(tmp_path / "store"), shard_rows=20, backend="tei",
                      compute={"tei_url": [url], "shard_workers": 2})  # fmt: skip
    assert not list((tmp_path / "store").rglob("chunks/*.parquet")) and not list((tmp_path / "store").rglob("_failed/*"))


def test_an_incremental_run_reuses_vectors_in_the_workers(prefect_api, tmp_path: Path, tei: str) -> None:
    import json

    from wikiembed.flows.embed_dataset import embed_dataset
    from wikiembed.sample import generate_articles

    articles = list(generate_articles(80))
    live = tmp_path / "live.jsonl"
    live.write_text("".join(json.dumps(r) + "\n" for r in articles))
    store = tmp_path / "store"
    options = {"store": str(store), "shard_rows": 20, "backend": "tei", "compute": {"tei_url": [tei], "shard_workers": 2}}
    first = embed_dataset(source=str(live), **options)
    longest = max(range(len(articles)), key=lambda k: len(articles[k]["text"]))  # several chunks: some unchanged
    articles[longest]["text"] += "\n\nA new closing paragraph about bridges and rivers."
    live.write_text("".join(json.dumps(r) + "\n" for r in articles))
    daily = embed_dataset(source=str(live), **options)
    # The edited article is the new generation's one shard; its unchanged chunks take their old vectors.
    assert daily["changes"]["edited"] == 1 and daily["shards_done"] == daily["shards_total"] == 1
    assert daily["reused_chunks"] > 0 and 0 < daily["embedded_chunks"] < first["chunks"] // 5
    assert daily["embedded_chunks"] + daily["reused_chunks"] == daily["chunks"]
    assert daily["kept_chunks"] > 0 and daily["chunks"] + daily["kept_chunks"] >= first["chunks"]
    _assert_done_and_exact(store, 1)
