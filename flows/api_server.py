"""The Prefect API a CLI run talks to when no PREFECT_API_URL is set, owned by the CLI.

Prefect would start its own temporary server (a uvicorn subprocess) in the
CLI's process group: a Ctrl-C in the terminal then kills that server too, the
run hangs retrying it, and after a SIGKILL of the CLI the server lives on.
This one is started the same way (Prefect's app factory, the same settings),
but in its own session, so the terminal's signals reach only the CLI; on Linux
it also gets SIGTERM from the kernel the moment the CLI dies, however it dies.

Touches: one child process, a free localhost port, and PREFECT_API_URL in this
process's environment and Prefect's settings.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from wikiembed.errors import WikiembedError

# The server starts in about 10 s on a loaded 2-core machine; Prefect's own default wait is 20 s.
STARTUP_TIMEOUT_S = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: ask the kernel for SIGTERM when the parent dies (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _point_prefect_at(url: str) -> None:
    import prefect.context

    os.environ["PREFECT_API_URL"] = url
    prefect.context.refresh_global_settings_context()  # Prefect read its settings when imported


def needs_own_server() -> bool:
    """True when Prefect would start a temporary server: no API configured (env, profile, toml)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    return not settings.api.url and bool(settings.server.ephemeral.enabled)


class ApiServer:
    """A temporary Prefect API server, in its own session, that dies with this process."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        """Start the server, wait until it answers, point this process's Prefect at it; return its URL."""
        port = _free_port()
        parent = os.getpid()
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"],
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=lambda: _die_with_parent(parent),
        )
        self.url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise WikiembedError(
                    f"the temporary Prefect API server exited with code {self.process.returncode} while starting; "
                    "run `prefect server start` and set PREFECT_API_URL, then run the same command again."
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        _point_prefect_at(self.url)
                        return self.url
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise WikiembedError(
            f"the temporary Prefect API server did not answer within {STARTUP_TIMEOUT_S:.0f} s; raise "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or run `prefect server start` and set PREFECT_API_URL."
        )

    def stop(self, wait_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `wait_s`; safe to call twice."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
