"""`--backend modal` with the store on a Modal Volume: shards fan out as references, markers come back.

Modal's cloud is `tests/standins/modal_cloud.py`: the real `wikiembed.store_ops` code in
container subprocesses over an emulated Volume (commit/reload visibility, crashes
rescheduled on a new container), embedding with the TEI stand-in. The flow, Prefect and
the store code are the real ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.flows.conftest import ROOT, cli_here
from tests.standins.hub_server import HubServer
from tests.standins.modal_cloud import CloudDict, CloudDir, ModalCloud
from tests.standins.tei_server import embed_texts, start_server
from wikiembed.model import DEFAULT_MODEL
from wikiembed.store import Store
from wikiembed.volume_store import LOCK_DICT

# What may cross between the flow's machine and Modal per shard: a reference out, a marker back.
MAX_REMOTE_BYTES_PER_SHARD = 10_000
STORE = "modal:wikiembed-store/wiki"


@pytest.fixture(scope="module")
def tei():
    url, server = start_server(model_id=DEFAULT_MODEL, max_client_batch_size=64)
    yield url
    server.stop()


def _cloud(tmp_path: Path, tei: str, **kw) -> ModalCloud:  # noqa: ANN003
    return ModalCloud(CloudDir(tmp_path / "cloud"), {"TEIShards": {"backend": "tei", "tei_url": [tei]}}, **kw)


def _assert_store_matches_the_stand_in(store: Path) -> int:
    """Every marker matches its committed file, and every vector is the TEI stand-in's."""
    s = Store(store)
    for marker in (store / "_done").glob("*.json"):
        assert s.verify_done(int(marker.stem)) is not None, marker.name
    table = pq.read_table(store / "data")
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert np.array_equal(vectors, embed_texts(table.column("text").to_pylist()))
    keys = list(zip(table.column("id").to_pylist(), table.column("chunk_index").to_pylist()))
    assert len(keys) == len(set(keys))
    return table.num_rows


def test_modal_run_moves_references_and_markers_only(prefect_api, tmp_path: Path, tei: str, monkeypatch) -> None:
    from wikiembed.flows.cli import status_payload
    from wikiembed.flows.embed_dataset import embed_dataset

    with _cloud(tmp_path, tei).installed(monkeypatch) as cloud:
        summary = embed_dataset(source="sample:150", store=STORE, shard_rows=30, backend="modal")
        status = status_payload(STORE)
        calls_of_the_run = len(cloud.cloud.calls())
        # A byte flipped in a data file on the Volume: `status --verify` rehashes the files in a container there.
        # (That a same-stat flip is found only by --verify is tests/wikiembed/test_store_ops.py's.)
        damaged = cloud.cloud.store("wiki") / "data" / "00002.parquet"
        raw = bytearray(damaged.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        damaged.write_bytes(bytes(raw))
        verified = status_payload(STORE, verify=True)
    assert summary["shards_done"] == summary["shards_total"] == 5 and summary["store"] == STORE
    assert status.done == 5 and status.source == "sample:150"
    assert status.published == status.generation and status.building is None
    assert verified.changed == 1 and [s.shard for s in verified.shards if s.state == "changed"] == [2]
    raw[len(raw) // 2] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    rows = _assert_store_matches_the_stand_in(cloud.cloud.store("wiki"))
    assert rows == summary["chunks"]
    assert (cloud.cloud.store("wiki") / "README.md").exists()  # exported on the Volume

    calls = cloud.cloud.calls()[:calls_of_the_run]
    shard_calls = [c for c in calls if c["method"] == "run_shard"]
    assert sorted(c["shard"] for c in shard_calls) == list(range(5))
    per_shard = max(c["bytes_out"] + c["bytes_in"] for c in shard_calls)
    assert per_shard < MAX_REMOTE_BYTES_PER_SHARD
    # All calls of the run together (plan, states, export included) are control data: far less than the text.
    text_bytes = sum(len(t.encode()) for t in pq.read_table(cloud.cloud.store("wiki") / "data").column("text").to_pylist())
    assert sum(c["bytes_out"] + c["bytes_in"] for c in calls) < text_bytes / 5


def test_failed_remote_shard_then_rerun_failed(prefect_api, tmp_path: Path, tei: str, monkeypatch) -> None:
    from wikiembed.flows.cli import main

    with _cloud(tmp_path, tei).installed(monkeypatch) as cloud:
        cloud.cloud.set_faults(fail_shards={2: "tokenizer: input rejected (422)"})
        code = main(["run", "--source", "sample:120", "--store", STORE, "--shard-rows", "30", "--backend", "modal"])
        assert code == 1
        store = cloud.cloud.store("wiki")
        failed = json.loads((store / "_failed" / "00002.json").read_text())
        assert "422" in failed["error"] and failed["attempts"] >= 1
        assert sorted(p.name for p in (store / "_done").iterdir()) == ["00000.json", "00001.json", "00003.json"]
        cloud.cloud.set_faults()  # the cause is fixed
        assert main(["rerun", "--store", STORE, "--failed"]) == 0
    assert not (store / "_failed" / "00002.json").exists()
    assert len(list((store / "_done").iterdir())) == 4
    _assert_store_matches_the_stand_in(store)
    # Only the failed shard was sent again.
    assert sorted(c["shard"] for c in cloud.cloud.calls() if c["method"] == "run_shard") == [0, 1, 2, 2, 3]


def test_flow_killed_mid_run_resumes_and_a_crashed_container_is_rescheduled(cli_env, tmp_path: Path, monkeypatch, capsys) -> None:
    # Slow answers keep shards in flight long enough to kill the flow among them.
    url, server = start_server(model_id=DEFAULT_MODEL, max_client_batch_size=16, latency_s=0.15)
    cloud_dir = CloudDir(tmp_path / "cloud")
    cloud_dir.configure({"TEIShards": {"backend": "tei", "tei_url": [url]}}, max_containers=2)
    cloud_dir.set_faults(kill_after_data=[1])
    args = [sys.executable, "-m", "tests.standins.modal_cloud", str(cloud_dir.path), "--",
            "run", "--source", "sample:240", "--store", STORE, "--shard-rows", "30", "--backend", "modal"]  # fmt: skip
    done_dir = cloud_dir.store("wiki") / "_done"
    try:
        proc = subprocess.Popen(args, env=cli_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if done_dir.exists() and len(list(done_dir.glob("*.json"))) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_at_kill = len(list(done_dir.glob("*.json")))
        assert 2 <= done_at_kill < 8
        # The run that resumes it needs no process of its own (nothing kills it): the CLI's main, here.
        with ModalCloud(cloud_dir).installed(monkeypatch):
            resumed = cli_here(capsys, *args[args.index("--") + 1 :])
    finally:
        server.stop()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(list(done_dir.glob("*.json"))) == 8
    assert (cloud_dir.path / "killed-1").exists()  # the container that died between data and marker
    _assert_store_matches_the_stand_in(cloud_dir.store("wiki"))
    calls = cloud_dir.calls()
    resumed_shards = [c["shard"] for c in calls if c["method"] == "run_shard"]
    # Shards committed before the kill were not sent again by the resumed run (at most the ones
    # in flight at the kill were answered after it and sent twice).
    assert len(resumed_shards) <= 8 + 2
    assert max(c["bytes_out"] + c["bytes_in"] for c in calls if c["method"] == "run_shard") < MAX_REMOTE_BYTES_PER_SHARD
    assert not [p for p in done_dir.parent.glob("data/.*")], "temp files committed as data"
    assert not list((cloud_dir.store("wiki") / "_failed").glob("*.json"))


def test_one_run_per_volume_store_and_a_killed_runs_lease_expires(cli_env, tmp_path: Path, tei: str, monkeypatch, capsys) -> None:
    from wikiembed import volume_store

    cloud_dir = CloudDir(tmp_path / "cloud")
    cloud_dir.configure({"TEIShards": {"backend": "tei", "tei_url": [tei]}}, max_containers=2)
    cloud_dir.set_faults(hold_prepare=True)  # the first run takes the store's lease, then hangs in its download step
    locks = CloudDict(cloud_dir, LOCK_DICT, create_if_missing=True)
    key = STORE.removeprefix("modal:")
    env = dict(cli_env, WIKIEMBED_VOLUME_LEASE_S="4")  # a dead run's lease expires within 4 s
    args = [sys.executable, "-m", "tests.standins.modal_cloud", str(cloud_dir.path), "--",
            "run", "--source", "sample:120", "--store", STORE, "--shard-rows", "30", "--backend", "modal"]  # fmt: skip
    first = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and first.poll() is None and not cloud_dir.held_prepares():
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
        lease = locks.get(key)
        assert lease["pid"] == first.pid

        cloud_dir.set_faults()
        # The runs after the first need no process of their own (nothing kills them): the CLI's main, here.
        monkeypatch.setattr(volume_store, "LEASE_S", 4.0)  # as WIKIEMBED_VOLUME_LEASE_S=4 sets it
        with ModalCloud(cloud_dir).installed(monkeypatch):
            second = cli_here(capsys, *args[args.index("--") + 1 :])
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"in use by the run on host {lease['host']}, pid {first.pid}, started {lease['started']}" in second.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()  # SIGKILL: the flow, then the container it was waiting for
        first.wait()
        for pid in cloud_dir.held_prepares():
            os.kill(pid, signal.SIGKILL)
    left = locks.get(key)
    assert left is not None and left["pid"] == first.pid  # a killed run could not release it...
    # ...and had it run on another machine, no one here could tell it died: the lease must expire.
    locks.put(key, {**left, "host": "elsewhere", "machine": "elsewhere/boot"})
    time.sleep(max(left["expires"] - time.time(), 0.0) + 0.2)
    with ModalCloud(cloud_dir).installed(monkeypatch):
        third = cli_here(capsys, *args[args.index("--") + 1 :])
    assert third.returncode == 0, third.stderr[-3000:]
    assert key not in locks  # released at the end of a run
    assert len(list((cloud_dir.store("wiki") / "_done").glob("*.json"))) == 4
    _assert_store_matches_the_stand_in(cloud_dir.store("wiki"))


def test_export_and_upload_of_a_volume_store_run_in_the_cloud(prefect_api, tmp_path: Path, tei: str, monkeypatch, capsys) -> None:
    from wikiembed.flows.cli import main

    with HubServer() as hub:
        # The containers' environment: the Hub they reach and the `huggingface` secret's token.
        for name, value in {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
                            "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_test_token"}.items():  # fmt: skip
            monkeypatch.setenv(name, value)
        with _cloud(tmp_path, tei).installed(monkeypatch) as cloud:
            assert main(["run", "--source", "sample:60", "--store", STORE, "--shard-rows", "30", "--backend", "modal"]) == 0
            capsys.readouterr()
            assert main(["export", "--store", STORE, "--to", "modal:wikiembed-store/published"]) == 0
            exported = json.loads(capsys.readouterr().out)
            assert main(["upload", "--store", STORE, "--to", "hub:alice/wiki-minilm"]) == 0
            uploaded = json.loads(capsys.readouterr().out)
            # What would bring the data down to this machine is refused, with the way to do it.
            assert main(["export", "--store", STORE, "--to", str(tmp_path / "here")]) == 2
            to_here = capsys.readouterr().err
            assert main(["upload", "--store", STORE, "--to", "modal:other-volume/published"]) == 2
            other_volume = capsys.readouterr().err
            assert main(["run", "--source", "sample:60", "--store", STORE, "--backend", "modal",
                         "--upload-to", f"dir:{tmp_path / 'here'}"]) == 2  # fmt: skip
            upload_to_here = capsys.readouterr().err
            assert main(["search", "--store", STORE, "rivers"]) == 2
            search = capsys.readouterr().err
            assert main(["eval", "--store", "runs/local", "--against", STORE]) == 2
            against = capsys.readouterr().err
        calls = cloud.cloud.calls()
        hub_files = hub.files("alice/wiki-minilm")
    published = cloud.cloud.store("published")
    chunks = pq.read_table(cloud.cloud.store("wiki") / "data").num_rows
    assert exported["url"] == exported["target"] == "modal:wikiembed-store/published" and exported["rows"] == chunks
    assert pq.read_table(published / "data").num_rows == chunks and (published / "README.md").exists()
    assert uploaded["rows"] == chunks and uploaded["committed"]
    assert "README.md" in hub_files and any(name.startswith("data/train-") for name in hub_files)
    assert not (tmp_path / "here").exists() and "hub:ORG/NAME" in to_here and "modal:wikiembed-store/FOLDER" in to_here
    assert "mount only that one" in other_volume and "--upload-to" in upload_to_here and "hub:ORG/NAME" in upload_to_here
    assert "modal volume get wikiembed-store wiki/gens/GEN ./wiki" in search and "modal volume get" in against
    # Only the request and a summary crossed: the data went from the Volume to the Hub.
    publish_calls = [c for c in calls if c["method"] == "publish"]
    assert len(publish_calls) == 2 and max(c["bytes_out"] + c["bytes_in"] for c in publish_calls) < MAX_REMOTE_BYTES_PER_SHARD
    assert STORE.removeprefix("modal:") not in CloudDict(cloud.cloud, LOCK_DICT)  # each command released its lease


def test_a_new_source_version_on_a_volume_store_reuses_unchanged_vectors(prefect_api, tmp_path: Path, tei: str, monkeypatch) -> None:
    from wikiembed.flows.embed_dataset import embed_dataset

    with _cloud(tmp_path, tei).installed(monkeypatch) as cloud:
        first = embed_dataset(source="sample:60", store=STORE, shard_rows=30, backend="modal")
        second = embed_dataset(source="sample:90", store=STORE, shard_rows=30, backend="modal")  # 30 articles added
    assert first["embedded_chunks"] == first["chunks"]
    # The first 60 articles are unchanged: their chunks are taken from the published generation
    # (through the index the download step saved there), only the added ones are embedded.
    assert second["reused_chunks"] == first["chunks"]
    assert second["changes"] == {"added": 30, "removed": 0, "edited": 0}  # counted at the Volume
    assert second["embedded_chunks"] == second["chunks"] - first["chunks"] > 0
    assert _assert_store_matches_the_stand_in(cloud.cloud.store("wiki")) == second["chunks"]


def test_a_run_that_lost_its_lease_stops_sending_shards_and_fails(prefect_api, tmp_path: Path, tei: str, monkeypatch) -> None:
    import threading

    from wikiembed import volume_store
    from wikiembed.errors import StoreError
    from wikiembed.flows.embed_dataset import embed_dataset

    monkeypatch.setattr(volume_store, "LEASE_S", 1.2)  # renewed every 0.2 s
    key = STORE.removeprefix("modal:")
    with _cloud(tmp_path, tei).installed(monkeypatch) as cloud:
        locks = CloudDict(cloud.cloud, LOCK_DICT, create_if_missing=True)  # as `from_name(..., create_if_missing=True)` would
        done = cloud.cloud.store("wiki") / "_done"

        def take_over_after_the_first_shard() -> None:
            # As a second run does once this one missed its renewals: its takeover record, then the lease.
            deadline = time.monotonic() + 120
            while not list(done.glob("*.json")) and time.monotonic() < deadline:
                time.sleep(0.05)
            ours = locks.get(key)
            locks.put(f"{key}#took:{ours['token']}", "other", skip_if_exists=True)
            locks.put(key, {"token": "other", "host": "elsewhere", "pid": 4242, "expires": time.time() + 600})

        thief = threading.Thread(target=take_over_after_the_first_shard, daemon=True)
        thief.start()
        with pytest.raises(StoreError, match=r"lost its lease.*host elsewhere, pid 4242.*stopped sending shards"):
            embed_dataset(source="sample:200", store=STORE, shard_rows=10, backend="modal", compute={"concurrency": 2})
        thief.join(timeout=5)
        sent = sorted(c["shard"] for c in cloud.cloud.calls() if c["method"] == "run_shard")
        assert 1 <= len(sent) < 20  # the shards in flight finished; the rest were never sent
        assert locks.get(key)["token"] == "other"  # the new holder keeps the store
        assert not (cloud.cloud.store("wiki") / "README.md").exists()  # and its export
        _assert_store_matches_the_stand_in(cloud.cloud.store("wiki"))  # what did finish is whole
        finished = {int(p.stem) for p in done.glob("*.json")}
        assert finished and finished <= set(sent)

        locks.pop(key)  # the other run ended
        summary = embed_dataset(source="sample:200", store=STORE, shard_rows=10, backend="modal", compute={"concurrency": 2})
    assert summary["shards_done"] == 20
    resent = [c["shard"] for c in cloud.cloud.calls() if c["method"] == "run_shard"][len(sent):]
    assert sorted(resent) == sorted(set(range(20)) - finished)  # only what the stopped run had not finished


def test_int8_on_a_volume_store_is_calibrated_in_the_cloud_as_a_local_run_calibrates(
    prefect_api, tmp_path: Path, tei: str, monkeypatch
) -> None:
    from wikiembed.flows.embed_dataset import embed_dataset

    output = {"dimensions": [384, 64], "precision": ["float32", "int8"]}
    local = tmp_path / "local"
    embed_dataset(source="sample:60", store=str(local), shard_rows=30, backend="tei", compute={"tei_url": [tei]}, output=output)
    with _cloud(tmp_path, tei).installed(monkeypatch) as cloud:
        summary = embed_dataset(source="sample:60", store=STORE, shard_rows=30, backend="modal", output=output)
        calls = [c["method"] for c in cloud.cloud.calls()]
    assert summary["shards_done"] == 2
    assert calls.count("calibrate") == 1 and calls.index("calibrate") < calls.index("run_shard")  # before any shard
    volume = Store(cloud.cloud.store("wiki"))
    ranges = volume.read_manifest().int8
    # The same backend embeds the same first chunks: the same ranges and the same int8 codes as a local run.
    assert ranges and ranges == Store(local).read_manifest().int8
    columns = ["embedding_int8", "embedding_64_int8"]
    cloud_codes = pq.read_table(volume.dir / "data", columns=columns)
    local_codes = pq.read_table(Store(local).dir / "data", columns=columns)
    assert cloud_codes.num_rows == summary["chunks"] and cloud_codes.equals(local_codes)
    assert "int8" in (cloud.cloud.store("wiki") / "README.md").read_text()  # the card carries the ranges' form
