"""Writing the source snapshot, stopped or refused: a stop leaves no temp file, a full disk is one
message, an absurd sample size is refused before anything starts. Real CLI subprocesses, real
signals, a real full (tmpfs) disk."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.flows.conftest import ROOT, run_cli


def _temp_files(store: Path) -> list[str]:
    return sorted(p.relative_to(store).as_posix() for p in store.rglob(".*.tmp-*"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_the_snapshot_is_written_leaves_no_temp_file(cli_env, tmp_path, signum):
    store = tmp_path / "store"
    # about 90 s of snapshot writing: the stop always lands in the middle of it
    proc = subprocess.Popen([sys.executable, "-m", "wikiembed.flows.cli", "run", "--source", "sample:200000", "--store", str(store)],
                            env=cli_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(store.glob("gens/*/snapshot/.source.parquet.tmp-*")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the snapshot was not started within 300 s"
        time.sleep(0.1)
    time.sleep(1)  # some row groups written
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("wikiembed: ")
    assert _temp_files(store) == []


def test_a_full_disk_while_the_snapshot_is_written_is_one_message(cli_env, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=900k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        store = mount / "store"
        proc = run_cli(cli_env, "run", "--source", "sample:3000", "--store", str(store))
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = [line for line in proc.stderr.splitlines() if line.strip() and "Loading weights" not in line]
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert "snapshot/source.parquet" in lines[0] and "No space left on device" in lines[0]
        assert "free space on that disk or point --store at a bigger one" in lines[0]
        assert _temp_files(store) == [] and not list(store.rglob("manifest.json"))
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_an_absurd_sample_size_is_refused_before_anything_starts(cli_env, tmp_path):
    store = tmp_path / "store"
    started = time.monotonic()
    proc = run_cli(cli_env, "run", "--source", "sample:99999999999999", "--store", str(store))
    assert proc.returncode == 2 and time.monotonic() - started < 60
    assert "sample:99999999999999" in proc.stderr and "at most 10,000,000 articles" in proc.stderr
    assert not store.exists()
