"""Stopping a run: Ctrl-C and SIGTERM stop it in seconds with one line and a resumable store, and
nothing the CLI started outlives it. Real CLI subprocesses, real signals, and no PREFECT_API_URL:
the CLI runs Prefect's temporary API server as a user's terminal would. A SIGKILL of the CLI is
test_prefect_versions.py's, on both ends of the Prefect range (that nothing it started outlives it); the Ctrl-C
test here is that file's Ctrl-C on the newest Prefect, which it runs on the lowest only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.flows.conftest import REFERENCE_ARGS, ROOT, cli_here, data_files
from tests.standins.tei_server import start_server

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory) -> Path:
    """The module's PREFECT_HOME, as a user's persists from run to run: the first run's temporary server
    creates its database, the later ones' open it (no second migration of a new database)."""
    return tmp_path_factory.mktemp("prefect-home")


def _env(prefect_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(prefect_home)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _descendants(pid: int) -> set[int]:
    """Every living process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_mid_run(args: list[str], env: dict[str, str], store: Path, ready: str = "gens/*/chunks/*.parquet",
                   ) -> tuple[subprocess.Popen, set[int]]:
    """Start the CLI in its own process group (a terminal's foreground job) and wait until the
    store holds `ready` with the temporary API server running; return it and what it started."""
    proc = subprocess.Popen([sys.executable, "-m", "wikiembed.flows.cli", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be stopped: {proc.communicate()[1][-2000:]}")
        if list(store.glob(ready)):
            started = _descendants(proc.pid)
            if started:
                return proc, started
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the run did not reach embedding within 300 s")


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return {p for p in pids if _alive(p)}


def test_ctrl_c_stops_in_seconds_with_one_line_then_the_same_command_finishes(reference, prefect_home, tmp_path, capsys):
    ref_store, _, _ = reference
    store = tmp_path / "store"
    proc, started = _start_mid_run(["run", *REFERENCE_ARGS, "--store", str(store)], _env(prefect_home), store)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground group
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == 130, err[-2000:]
    assert took < 10, f"Ctrl-C took {took:.1f} s"
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("wikiembed: interrupted; finished shards are kept") and "Traceback" not in err
    assert not _wait_gone(started, 10), "the CLI's children outlived it"
    final = cli_here(capsys, "run", *REFERENCE_ARGS, "--store", str(store))  # nothing stops this one: no process of its own
    assert final.returncode == 0, final.stderr[-2000:]
    assert data_files(store) == data_files(ref_store)


def test_sigterm_during_a_slow_tei_answer_stops_in_seconds(prefect_home, tmp_path):
    url, server = start_server(model_id=MODEL, latency_s=120)
    store = tmp_path / "store"
    try:
        args = ["run", "--source", "sample:60", "--shard-rows", "20", "--store", str(store), "--backend", "tei", "--tei-url", url]
        proc, started = _start_mid_run(args, _env(prefect_home), store, ready="gens/*/manifest.json")
        time.sleep(3)  # into the first (slow) TEI request
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err[-2000:]
        assert time.monotonic() - sent < 10
        assert err.strip().splitlines()[-1].startswith("wikiembed: stopped by SIGTERM; finished shards are kept")
        assert not _wait_gone(started, 10), "the CLI's children outlived it"
    finally:
        server.stop()


def test_a_run_that_fails_exits_at_once_and_leaves_nothing_behind(prefect_home, tmp_path):
    """Prefect's last logs reach the temporary server before it is stopped: no minute of retries
    against a server that is already gone, and no server left running."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens here once closed
    env = {**_env(prefect_home), "PREFECT_LOGGING_LEVEL": "INFO"}  # a user's default: logs go to the API
    proc = subprocess.Popen([sys.executable, "-m", "wikiembed.flows.cli", "run", "--source", "sample:40", "--shard-rows", "20",
                             "--store", str(tmp_path / "store"), "--backend", "tei", "--tei-url", url],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started: set[int] = set()
    for line in proc.stderr:
        started |= _descendants(proc.pid)
        if "cannot be reached" in line:
            break
    said = time.monotonic()
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 2 and url in line and "Traceback" not in rest
    assert time.monotonic() - said < 15, f"exited {time.monotonic() - said:.0f} s after its message: {rest[-500:]}"
    assert not _wait_gone(started, 10)
