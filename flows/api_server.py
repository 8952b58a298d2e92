"""The Prefect API a CLI run talks to when no PREFECT_API_URL is set, owned by the CLI.

Prefect would start its own temporary server (a uvicorn subprocess) in the
CLI's process group: a Ctrl-C in the terminal then kills that server too, the
run hangs retrying it, and after a SIGKILL of the CLI the server lives on.
This one is Prefect's public `prefect server start` (the same SQLite database
under PREFECT_HOME), run in its own session, so the terminal's signals reach
only the CLI, under a small watchdog (this module run as a script) that stops
the server as soon as the CLI is gone, however it went.

Touches: two child processes (the watchdog and the server), a free localhost
port, a log file under PREFECT_HOME, and PREFECT_API_URL in this process's
environment and Prefect's settings.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# The server starts in about 10 s on a loaded 2-core machine; Prefect's own default wait is 20 s.
STARTUP_TIMEOUT_S = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
# How often the watchdog checks that the CLI is still alive (seconds): the server outlives a
# SIGKILLed CLI by at most this, plus its own shutdown.
PARENT_CHECK_S = 0.5
# How long the watchdog lets the server shut down after SIGTERM before it kills it.
SERVER_STOP_S = 5.0
LOG_NAME = "wikiembed-api-server.log"


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


def server_command(port: int) -> list[str]:
    """`prefect server start` on localhost with only what a run needs: no UI, no scheduler, no late-run service."""
    return [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
            "--no-ui", "--no-scheduler", "--no-late-runs", "--analytics-off"]


class ApiServer:
    """A temporary Prefect API server, in its own session, that dies with this process."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None  # the watchdog; the server is its child
        self.url = ""
        self.log = Path()

    def start(self) -> str:
        """Start the server, wait until it answers, point this process's Prefect at it; return its URL."""
        from prefect.settings import get_current_settings

        from wikiembed.errors import WikiembedError

        port = _free_port()
        home = Path(get_current_settings().home)
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / LOG_NAME
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "wikiembed.flows.api_server", str(os.getpid()), *server_command(port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise WikiembedError(
                    f"the temporary Prefect API server exited with code {self.process.returncode} while starting "
                    f"(its log: {self.log}); run `prefect server start` and set PREFECT_API_URL, then run the same "
                    "command again."
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
            f"the temporary Prefect API server did not answer within {STARTUP_TIMEOUT_S:.0f} s (its log: {self.log}); "
            "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or run `prefect server start` and set PREFECT_API_URL."
        )

    def stop(self, wait_s: float = 5.0) -> None:
        """Ask the watchdog to stop the server; kill both after `wait_s`. Safe to call twice."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            # The watchdog leads its own process group, the server in it: kill the group at once.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _watch(parent: int, command: list[str]) -> int:
    """Run `command` until it exits, this process gets SIGTERM, or `parent` is gone; return its exit code.

    Polling the parent (a process that is orphaned gets a new parent) works wherever Python does,
    and costs nothing the server does not already pay."""
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    while server.poll() is None and not stopping and os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=SERVER_STOP_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return server.returncode


if __name__ == "__main__":
    sys.exit(_watch(int(sys.argv[1]), sys.argv[2:]))
