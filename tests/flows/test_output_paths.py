"""Where a command writes is checked before it works: a JSON path naming a folder, or a folder on a read-only disk,
is refused at once with one message (exit 2), not with a traceback after the work. The read-only disks are real:
a read-only mount in a mount namespace of the CLI's own (`unshare`), so nothing on this machine changes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.flows.conftest import ROOT, cli_here


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


def read_only(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """`wikiembed ARGS` with `folder` mounted read-only (in a mount namespace of its own)."""
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(folder), sys.executable, "-m", "wikiembed.flows.cli",
                           *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_json_path_that_is_a_folder_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    searched = cli_here(capsys, "search", "--store", str(tmp_path / "store"), "python loops", "--json", str(folder))
    assert searched.returncode == 2 and f"--json {folder}: is a folder; give a file name" in searched.stderr, searched.stderr
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "a", "id": "x"}\n')
    improved = cli_here(capsys, "improve", "--store", str(tmp_path / "store"), "--pairs", str(pairs), "--out",
                        str(tmp_path / "model"), "--new-store", str(tmp_path / "new"), "--json", str(folder))
    assert improved.returncode == 2 and f"--json {folder}: is a folder" in improved.stderr, improved.stderr
    assert improved.stderr.count("error:") == 1 and "Traceback" not in improved.stderr
    assert not (tmp_path / "model").exists() and not (tmp_path / "new").exists()


@pytest.mark.skipif(not _namespaces_work(), reason="needs `unshare -rm` (user and mount namespaces)")
def test_a_read_only_disk_is_refused_before_any_work(prefect_api: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = tmp_path / "store"
    assert cli_here(capsys, "run", "--source", "sample:10", "--store", str(store)).returncode == 0
    indexed = read_only(store, "index", "--store", str(store))
    assert indexed.returncode == 2, indexed.stderr[-2000:]
    assert f"--store {store}: cannot be written (the index is written into the store)" in indexed.stderr
    assert "read-only" in indexed.stderr and "Traceback" not in indexed.stderr

    mount = tmp_path / "ro"
    mount.mkdir()
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "a", "id": "x"}\n')
    tuned = read_only(mount, "finetune", "--store", str(store), "--pairs", str(pairs), "--out", str(mount / "model"))
    assert tuned.returncode == 2 and f"--out {mount / 'model'}: cannot be written: {mount} is read-only" in tuned.stderr, tuned.stderr
    assert "Traceback" not in tuned.stderr
    searched = read_only(mount, "search", "--store", str(store), "python", "--json", str(mount / "hits.json"))
    assert searched.returncode == 2 and f"--json {mount / 'hits.json'}: cannot be written" in searched.stderr, searched.stderr
