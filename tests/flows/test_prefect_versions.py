"""The CLI's own Prefect API server on the lowest and the newest Prefect that pyproject.toml allows.

With no PREFECT_API_URL the CLI runs Prefect's public `prefect server start` under a watchdog
(flows/api_server.py). This pins what a user sees on both ends of the allowed range: a whole run
through that server, Ctrl-C stopping in seconds with one line, and nothing left running after a
normal exit, a Ctrl-C or a SIGKILL of the CLI (the suite's SIGKILL test of the CLI: no process it
started, the server or any other, outlives it). "newest" is the Prefect installed by `make install`
(the newest release the range allows at install time); "lowest" is the range's lower bound,
installed from PyPI into a venv of its own that takes every other package from this one.

On "newest" the Ctrl-C through the CLI's own server (its exit code, its one line, its time, nothing
it started left running) is tests/flows/test_signals.py's
test_ctrl_c_stops_in_seconds_with_one_line_then_the_same_command_finishes, which runs on the
installed Prefect; here "newest" does what no other test does: the SIGKILL, then the same command
finishing the killed run through a server of its own that stops with it. "lowest" does all three.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.flows.conftest import ROOT
from tests.flows.test_signals import _descendants, _wait_gone

# 12 small shards: a run is still embedding for seconds after its first chunk file.
ARGS = ["--source", "sample:60", "--shard-rows", "5"]


def lowest_allowed_prefect() -> str:
    """The lower bound of the `prefect` requirement in pyproject.toml (its `>=` version)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        req = Requirement(line)
        if req.name == "prefect":
            (lowest,) = [spec.version for spec in req.specifier if spec.operator == ">="]
            return lowest
    raise AssertionError("pyproject.toml has no prefect requirement")


@pytest.fixture(scope="session")
def lowest_prefect_python() -> str:
    """An interpreter whose Prefect is the lowest allowed and whose other packages are this venv's.

    Built once under build/ and reused: a venv holding only Prefect at that version plus whatever
    that version needs that this venv lacks, with a .pth that appends this venv's site-packages."""
    version = lowest_allowed_prefect()
    venv = ROOT / "build" / f"prefect-{version}"
    python = venv / "bin" / "python"
    done = venv / ".complete"
    if not done.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True)
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        ours = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
        (Path(site) / "zz_wikiembed_venv.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in ours))
        pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", f"prefect=={version}"],
                             capture_output=True, text=True)
        if pip.returncode != 0:
            pytest.fail(f"could not install prefect=={version} from PyPI into {venv} (pip exit {pip.returncode}): "
                        f"{pip.stderr[-1500:]}\nthis test needs PyPI; delete {venv} and run it again once pip can reach it")
        done.touch()
    found = subprocess.run([str(python), "-c", "import prefect; print(prefect.__version__)"],
                           check=True, capture_output=True, text=True).stdout.strip()
    assert found == version, f"{venv} holds prefect {found}, not {version}: delete it and run again"
    return str(python)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(home)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _processes_with_home(home: Path) -> dict[int, str]:
    """Every living process (pid: command line) whose PREFECT_HOME is `home`: what this test's runs started."""
    wanted = f"PREFECT_HOME={home}".encode()
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return out


def _left_after(home: Path, timeout: float) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while (left := _processes_with_home(home)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _start_mid_run(python: str, home: Path, store: Path) -> subprocess.Popen:
    """Start the CLI as a terminal's foreground job and return it once shards are being embedded."""
    proc = subprocess.Popen([python, "-m", "wikiembed.flows.cli", "run", *ARGS, "--store", str(store)], env=_env(home),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(store.glob("gens/*/chunks/*.parquet")):
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be stopped: {proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the run did not reach embedding within 300 s")
        time.sleep(0.2)
    return proc


@pytest.mark.parametrize("prefect_version", ["newest", "lowest"])
def test_the_clis_own_api_server_works_stops_and_never_outlives_the_cli(prefect_version, tmp_path, request):
    python = sys.executable if prefect_version == "newest" else request.getfixturevalue("lowest_prefect_python")
    home, store = tmp_path / "prefect-home", tmp_path / "store"

    # The server is Prefect's public command, started by the CLI.
    proc = _start_mid_run(python, home, tmp_path / "killed")
    running = _processes_with_home(home)
    assert any("-m prefect server start" in cmd for cmd in running.values()), running
    started = _descendants(proc.pid)
    assert started
    # SIGKILL runs no cleanup in the CLI: the watchdog sees it gone and stops the server.
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not _wait_gone(started, 15), "the CLI's children outlived a SIGKILL"
    assert not _left_after(home, 15), "the CLI's server outlived a SIGKILL"

    if prefect_version == "newest":
        # The Ctrl-C on the installed Prefect is test_signals.py's (see the module docstring): the killed run is finished.
        store = tmp_path / "killed"
    else:
        # Ctrl-C reaches the terminal's whole foreground group; the server, in its own session, keeps
        # answering until the CLI has said its one line and stopped it.
        proc = _start_mid_run(python, home, store)
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err[-3000:]
        assert time.monotonic() - sent < 10
        assert err.strip().splitlines()[-1].startswith("wikiembed: interrupted; finished shards are kept") and "Traceback" not in err
        assert not _left_after(home, 10), "the CLI's server outlived a Ctrl-C"

    # The same command finishes the interrupted run through the same kind of server, which stops with the CLI.
    done = subprocess.run([python, "-m", "wikiembed.flows.cli", "run", *ARGS, "--store", str(store)], env=_env(home),
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "12/12 shards done, 0 failed" in done.stderr + done.stdout
    assert not _left_after(home, 10), "the CLI's server outlived a finished run"
