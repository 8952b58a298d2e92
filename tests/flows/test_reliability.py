"""Reliability under stress: repeated SIGKILLs, flaky and failing backends, concurrent runs, a full disk.

Each test compares against the uninterrupted reference run (tests/flows/conftest.py):
same rows, same vectors, no duplicate (id, chunk_index), no temp file visible as data.
The counts these tests reach are printed (`-s`) and quoted in the README's Reliability section.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.flows import faults
from tests.flows.conftest import REFERENCE_ARGS, REFERENCE_SHARD_ROWS, REFERENCE_SOURCE, cli_here, data_files, start_run
from tests.standins.tei_server import embed_texts, start_server

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _assert_consistent(store: Path) -> None:
    """Markers match files, nothing hidden is data, no (id, chunk_index) twice."""
    from wikiembed.store import Store

    s = Store(store)
    for marker in (store / "_done").glob("*.json"):
        assert s.verify_done(int(marker.stem)) is not None, f"marker {marker.name} does not match its file"
    visible = [p for p in (store / "data").iterdir() if not p.name.startswith(".")]
    assert all(p.suffix == ".parquet" for p in visible)
    if visible:
        t = pq.read_table(store / "data", columns=["id", "chunk_index"])
        keys = list(zip(t.column("id").to_pylist(), t.column("chunk_index").to_pylist()))
        assert len(keys) == len(set(keys))


def test_five_sigkills_in_a_row_then_completion_equals_uninterrupted(reference, tmp_path, cli_env, capsys):
    ref_store, ref_summary, _ = reference
    store, published = tmp_path / "store", tmp_path / "published"
    args = [*REFERENCE_ARGS, "--store", str(store), "--upload-to", f"dir:{published}"]
    rng = random.Random(20261126)
    kills = 0
    finished: dict[str, int] = {}  # marker name -> its mtime when first seen after a kill
    # Kill points are events in the store, not clock times, so every kill lands mid-run however
    # fast the machine is: the first during start-up / download / sharding, then right after the
    # 1st, 2nd, ... shard is marked done (while others are being embedded and written). Each run is a process of
    # its own, forked warm (see start_run).
    for done_before_kill in range(5):
        proc = start_run(cli_env, *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            done = len(list((store / "_done").glob("*.json"))) if (store / "_done").exists() else 0
            if done >= done_before_kill + (1 if done_before_kill else 0) and (done_before_kill or (store / "gens").exists()):
                time.sleep(rng.uniform(0.0, 0.3))
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before kill point {done_before_kill}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if (store / "data").exists():
            _assert_consistent(store)
            assert all(not p.name.startswith(".") for p in (store / "data").glob("*.parquet"))  # nothing half-written is data
        for marker in (store / "_done").glob("*.json") if (store / "_done").exists() else ():
            finished.setdefault(marker.name, marker.stat().st_mtime_ns)
    assert finished, "no shard was done before the last kill"
    # The run that completes it needs no process of its own (nothing kills it): the CLI's main, here.
    final = cli_here(capsys, "run", *REFERENCE_ARGS, "--store", str(store), "--upload-to", f"dir:{published}")
    assert final.returncode == 0, final.stderr[-3000:]
    _assert_consistent(store)
    # No run after a kill redid a shard that was finished before it, and the output equals an uninterrupted run byte for byte.
    assert {name: (store / "_done" / name).stat().st_mtime_ns for name in finished} == finished
    assert data_files(store) == data_files(ref_store)
    assert not [p for p in (store / "data").iterdir() if p.name.startswith(".")]
    ref_pub = ref_store.parent / "published"
    assert sorted(p.name for p in (published / "data").rglob("*.parquet")) == sorted(
        p.name for p in (ref_pub / "data").rglob("*.parquet")
    )
    rows = pq.read_table(published / "data").num_rows
    assert rows == ref_summary["chunks"]
    print(f"\nreliability: {kills} SIGKILLs survived, {rows} rows checked")


def test_flaky_backend_a_fifth_of_calls_fail_and_output_is_identical(reference, prefect_api, tmp_path, monkeypatch):
    from wikiembed.flows.embed_dataset import embed_dataset
    ref_store, ref_summary, _ = reference
    faulty = faults.install(monkeypatch, fail_every=5)
    summary = embed_dataset(source=REFERENCE_SOURCE, store=str(tmp_path / "store"), shard_rows=REFERENCE_SHARD_ROWS)
    assert summary["shards_failed"] == 0 and faulty.injected > 0
    assert summary["retries"] >= faulty.injected
    assert data_files(tmp_path / "store") == data_files(ref_store)
    print(f"\nreliability: {faulty.injected} transient faults injected in {faulty.calls} embed calls, retried to identical output")


def test_tei_backend_through_faults_returns_exactly_the_right_vectors(prefect_api, tmp_path):
    from wikiembed.flows.embed_dataset import embed_dataset

    url, server = start_server(model_id=MODEL, max_client_batch_size=8, error_rate=0.1, drop_rate=0.1, slow_rate=0.05, slow_s=0.3, seed=3)
    try:
        summary = embed_dataset(source="sample:120", store=str(tmp_path / "store"), shard_rows=40, backend="tei",
                                compute={"tei_url": [url]})
    finally:
        server.stop()
    assert summary["shards_done"] == 3 and summary["retries"] > 0
    table = pq.read_table(tmp_path / "store" / "data")
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert np.array_equal(got, embed_texts(table.column("text").to_pylist()))
    print(f"\nreliability: TEI stand-in dropped {server.stats.dropped} connections, {summary['retries']} retries, {len(got)} vectors exact")


def test_permanent_failure_then_fix_then_rerun_failed(tmp_path, prefect_api, capsys):
    store = tmp_path / "store"
    poison = "Company"  # a word in some sample titles' articles: those shards always get a 422
    url, server = start_server(model_id=MODEL, poison=poison, max_client_batch_size=16)
    try:
        run = cli_here(capsys, "run", "--source", "sample:120", "--shard-rows", "40", "--store", str(store),
                       "--backend", "tei", "--tei-url", url)
    finally:
        server.stop()
    assert run.returncode == 1
    assert "wikiembed rerun --store" in run.stdout and "failed shards:" in run.stdout
    status = json.loads(cli_here(capsys, "status", "--store", str(store), "--json").stdout)
    failed = [s for s in status["shards"] if s["state"] == "failed"]
    assert failed and all("422" in s["error"] or poison in s["error"] for s in failed)
    assert status["done"] + status["failed"] == 3
    _assert_consistent(store)
    # the cause is fixed (the server no longer rejects the input): rerun only the failed shards
    fixed_url, fixed = start_server(model_id=MODEL, max_client_batch_size=16, port=int(url.rsplit(":", 1)[1]))
    try:
        rerun = cli_here(capsys, "rerun", "--store", str(store), "--failed")
    finally:
        fixed.stop()
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    status = json.loads(cli_here(capsys, "status", "--store", str(store), "--json").stdout)
    assert status["done"] == 3 and status["failed"] == 0


def test_a_second_run_on_a_busy_store_is_refused_clearly(tmp_path, cli_env):
    store = tmp_path / "store"
    # Long enough that the first run is still embedding when the second has started (it is killed after).
    # Both are processes of their own, forked warm (see start_run).
    args = ["--source", "sample:600", "--shard-rows", "50", "--store", str(store)]
    first = start_run(cli_env, *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (store / "manifest.json").exists():
            time.sleep(0.1)
        second = start_run(cli_env, *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stderr = second.stderr.read().decode()
        assert second.wait(timeout=300) == 2
        assert "in use by pid" in stderr and "Traceback" not in stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    _assert_consistent(store)


def test_full_disk_fails_shards_cleanly_and_keeps_done_ones(prefect_api, tmp_path, monkeypatch):
    from wikiembed.errors import ShardsFailed
    from wikiembed.flows.embed_dataset import embed_dataset
    import wikiembed.flows.embed_dataset as flow_module

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=450k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root); the ENOSPC path is covered by tests/wikiembed/test_store.py")
    try:
        monkeypatch.setattr(flow_module, "embed_task", flow_module.embed_task.with_options(retry_delay_seconds=0.1))
        with pytest.raises(ShardsFailed) as ended:  # the flow run ends Failed, with what it finished
            embed_dataset(source=REFERENCE_SOURCE, store=str(mount / "store"), shard_rows=REFERENCE_SHARD_ROWS)
        summary = ended.value.summary
        assert 0 < summary["shards_done"] < summary["shards_total"]
        from wikiembed.store import Store

        s = Store(mount / "store")
        states = s.states()
        assert any(st.state == "failed" and "free space" in (st.error or "") for st in states)
        assert all(s.verify_done(st.shard) is not None for st in states if st.state == "done")
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
