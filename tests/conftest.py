"""Test session setup: isolated Prefect home, one shared Prefect API server, offline Hub, tiers.

Two tiers: `slow` is every test under tests/flows/ (whole flows through Prefect, real CLI
subprocesses, servers, signals) plus the few library tests marked so; `make test-fast` runs
the rest for the edit loop, CI runs everything.

Prefect's server takes ~10 s to start on 2 cores, so one server (the API Prefect's own test
harness runs: a real API on SQLite in a subprocess) serves the whole run, xdist workers
included, and starts while the workers start; subprocess tests get its URL through `cli_env`. `make test` runs the suite on
one xdist worker more than there are cores, a test file's tests on one worker, so each module fixture is built once.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

_HOME = tempfile.mkdtemp(prefix="wikiembed-tests-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)  # the session's Prefect home, caches and shared server's database
os.environ.setdefault("PREFECT_HOME", str(Path(_HOME) / "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
# A flow run without an API URL starts an ephemeral server; on 2 busy cores it can take longer than its default 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", str(Path(_HOME) / "hf"))
os.environ.setdefault("WIKIEMBED_CACHE", str(Path(_HOME) / "wikiembed-cache"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# xdist workers share the cores: each gets its share of torch/OpenMP threads (read when torch starts, and
# inherited by the CLI subprocesses a test starts). Two workers of two threads each on two cores spend about
# half again as much CPU on the same tests, OpenMP's threads spinning while they wait for a core.
if (_workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

ROOT = Path(__file__).resolve().parents[1]


# Seconds each of the longest test files took (the junit times of a whole `make test` on a 2-core
# machine, 3 workers, summed per file: only the order matters). `make test` runs files on xdist workers in collection
# order (--no-loadscope-reorder), and the files are collected longest first, so that no long file starts last
# and leaves the other workers idle. A file not listed counts as 0 s and keeps its place.
FILE_SECONDS = {
    "tests/flows/test_prefect_versions.py": 123,
    "tests/flows/test_reliability.py": 105,
    "tests/flows/test_improve_model.py": 97,
    "tests/flows/test_improve_on_modal.py": 95,
    "tests/bench/test_smoke_models.py": 93,
    "tests/flows/test_deployments.py": 93,
    "tests/bench/test_smoke_loops.py": 89,
    "tests/bench/test_smoke_scale.py": 80,
    "tests/bench/test_smoke.py": 78,
    "tests/flows/test_signals.py": 76,
    "tests/wikiembed/test_fast_tokenizer.py": 75,
    "tests/flows/test_published.py": 74,
    "tests/flows/test_incremental.py": 57,
    "tests/flows/test_vector_identity.py": 56,
    "tests/flows/test_modal_fanout.py": 51,
    "tests/flows/test_serve.py": 51,
    "tests/flows/test_finetune.py": 49,
    "tests/flows/test_mistakes.py": 31,
    "tests/wikiembed/test_publish.py": 30,
    "tests/flows/test_embed_dataset.py": 28,
    "tests/flows/test_snapshot_stops.py": 27,
    "tests/flows/test_executors.py": 27,
    "tests/flows/test_tei_workers.py": 23,
    "tests/flows/test_ui_reports.py": 18,
    "tests/flows/test_model_shapes.py": 17,
    "tests/wikiembed/backends/test_engine.py": 16,
    "tests/modal_workers/test_finetune_app.py": 15,
    "tests/flows/test_hub_daily.py": 14,
    "tests/test_packaging.py": 14,
    "tests/wikiembed/backends/test_model_shapes.py": 14,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    flows = ROOT / "tests" / "flows"
    for item in items:
        if flows in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.slow)
    # Longest files first; a file's own tests keep their order (the sort is stable).
    items.sort(key=lambda item: -FILE_SECONDS.get(_file(item), 0))


def _file(item: pytest.Item) -> str:
    return Path(str(item.path)).relative_to(ROOT).as_posix()


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """`-m "not slow"` (make test-fast) does not import tests/flows/: every test there is slow (above)."""
    if (config.option.markexpr or "").strip() == "not slow" and collection_path == ROOT / "tests" / "flows":
        return True
    return None


def pytest_configure(config: pytest.Config) -> None:
    """Under `pytest -n N` with the slow tier selected, one server for all workers: the controller
    starts it before the workers exist, and they inherit its URL through PREFECT_API_URL. It is not
    waited for here: it starts (about 10 s) while the workers start and collect, and each worker
    waits for it before its first test (`_shared_api_ready`)."""
    workers = getattr(config.option, "numprocesses", None)
    if hasattr(config, "workerinput") or not workers or "not slow" in (config.option.markexpr or ""):
        return
    server = _SharedServer()
    config.stash[_SERVER] = server
    os.environ["PREFECT_API_URL"] = os.environ[_SHARED_API] = server.url
    os.environ[_SHARED_API_LOG] = str(server.log)


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_SERVER, None)
    if server is not None:
        server.stop()


class _SharedServer:
    """Prefect's API on SQLite in a subprocess: what `prefect.testing.utilities.prefect_test_harness` starts
    (uvicorn serving `create_app` with the same environment), on a port of its own, started and not waited for."""

    def __init__(self) -> None:
        import socket
        import subprocess
        from importlib.util import find_spec

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/api"
        folder = Path(_HOME) / "shared-api"
        folder.mkdir()
        self.log = folder / "server.log"
        prefect_dir = Path(find_spec("prefect").origin).parent
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
               "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{folder / 'prefect.db'}"}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_dir.parent), "--factory",
                 "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "error",
                 "--lifespan", "on"],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        import subprocess

        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _wait_healthy(url: str, timeout: float) -> None:
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the tests' shared Prefect API server at {url} did not answer /health within {timeout:.0f} s; "
                               f"its log is {os.environ.get(_SHARED_API_LOG)}")
        time.sleep(0.2)


_SERVER = pytest.StashKey[_SharedServer]()
_SHARED_API = "WIKIEMBED_TESTS_PREFECT_API_URL"  # set only by the controller above, never by a user's shell
_SHARED_API_LOG = "WIKIEMBED_TESTS_PREFECT_API_LOG"  # that server's log, for the workers' message


@pytest.fixture(scope="session", autouse=True)
def _shared_api_ready():
    """An xdist worker's first test waits for the controller's server (above) to answer."""
    if os.environ.get(_SHARED_API):
        _wait_healthy(os.environ[_SHARED_API], 180)
    yield


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API server (SQLite) shared by every test in the session; yields its URL.

    An xdist worker uses the controller's (see pytest_configure); otherwise the first test that
    needs one starts it."""
    if os.environ.get(_SHARED_API):
        yield os.environ[_SHARED_API]
        return
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture()
def cli_env(prefect_api):
    """Environment for running `wikiembed` in a subprocess against the shared API."""
    env = dict(os.environ)
    env["PREFECT_API_URL"] = prefect_api
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture()
def wikiembed_cmd():
    """argv prefix that runs the CLI with this interpreter."""
    return [sys.executable, "-m", "wikiembed.flows.cli"]


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder that `build(folder)` fills once per test run, xdist workers included; returns it.

    Under xdist the first worker that asks builds it in the run's shared temp root (under a file
    lock, so the other waits rather than building it again); a failed build leaves nothing, and the
    next worker that asks builds it again (and fails the same way). Callers must not change the
    folder: copy it first (`shutil.copytree`) where a test writes into it."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-N/, shared by this run's workers (each has pytest-N/popen-gwK/)
    folder, done = base / f"shared-{name}", base / f"shared-{name}.done"
    with FileLock(str(base / f"shared-{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            try:
                build(folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            done.touch()
    return folder
