"""Processes started warm: forked from a process that has already imported their code.

A new interpreter for the CLI spends about 5 s of CPU importing Prefect, torch and transformers before
it does anything, and a Modal stand-in container about 1 s importing pyarrow, pandas and the store's
code. Where a test needs a process of its own (to SIGKILL it, or because it is a container), a warm
process imports that code once, in the environment the processes get (modules that read the
environment when imported read the same values), and forks each process from there. The forked
process then sets its environment, standard streams and arguments and calls its entry function, as
`python -m MODULE ARGS` would call it; it ends through `sys.exit`, as that would.

    warm = warm_for(env, ("wikiembed.flows.embed_dataset",))
    proc = warm.start("wikiembed.flows.cli:main", ["run", ...], env, stdout=subprocess.DEVNULL)
    proc.poll(); proc.send_signal(signal.SIGKILL); proc.wait()

`start` returns a `Started`, which offers what the tests use of a `subprocess.Popen`: `pid`, the
`stdin`, `stdout` and `stderr` pipes, `poll`, `wait`, `communicate`, `send_signal`, `kill`,
`returncode` (negative: the signal that ended it). The warm process must be single-threaded when it
forks: its imports start no Python thread (pyarrow's allocator starts one native thread of its own,
which its fork handlers allow for).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
KEPT = 3  # warm processes a caller keeps (least recently used ones are let go)
# Variables no module reads when imported, which change in a test process as it runs: a warm process serves
# any of their values (a started process gets its own environment before its entry runs). pytest sets the
# first for every test; a run in the test process sets the tokenizer choice (wikiembed.fast_tokenizer.choice
# reads it when called).
_VOLATILE = ("PYTEST_CURRENT_TEST", "WIKIEMBED_TOKENIZER")


class Started:
    """A process forked by a `Warm`. It is the warm process's child: the warm process reaps it and writes its
    wait status to a pipe this end reads (`poll`, `wait`)."""

    def __init__(self, pid: int, status: int, stdin: IO[bytes] | None, stdout: IO[bytes] | None, stderr: IO[bytes] | None) -> None:
        self.pid, self._status, self.stdin, self.stdout, self.stderr = pid, status, stdin, stdout, stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._status], [], [], 0)[0]:
            self._read_status()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._status], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
            self._read_status()
        assert self.returncode is not None
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[bytes | None, bytes | None]:
        """As `Popen.communicate` without input: what the `stdout` and `stderr` pipes held, once it has ended."""
        out: dict[str, bytes] = {}
        readers = [threading.Thread(target=lambda name=name, pipe=pipe: out.__setitem__(name, pipe.read()), daemon=True)
                   for name, pipe in (("stdout", self.stdout), ("stderr", self.stderr)) if pipe is not None]
        for reader in readers:
            reader.start()
        self.wait(timeout)
        for reader in readers:
            reader.join(timeout)
        return out.get("stdout"), out.get("stderr")

    def _read_status(self) -> None:
        data = os.read(self._status, 64)
        os.close(self._status)
        # No status: the warm process ended first (the caller let it go); the process was not its to report.
        self.returncode = os.waitstatus_to_exitcode(int(data)) if data else -signal.SIGKILL

    def __del__(self) -> None:
        if self.returncode is None:  # never waited for: its status pipe is let go
            with contextlib.suppress(OSError):
                os.close(self._status)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Warm:
    """A process that has imported `imports` (in `env`) and forks a process for each `start`. It ends once its
    caller lets it go (`close`, or the caller's end) and the processes it started have ended."""

    def __init__(self, env: dict[str, str], imports: Sequence[str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.warm", str(theirs.fileno()), *imports],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, cwd=ROOT, env=env)
        theirs.close()
        self.sock = ours
        self.lock = threading.Lock()

    def start(self, entry: str, argv: Sequence[str], env: dict[str, str], *, cwd: Path | str = ROOT,
              stdin: Any = None, stdout: Any = None, stderr: Any = None) -> Started:
        """`entry` ("module:function", called with `argv`, its return value the exit code) in a forked process.
        Each stream is None (this process's), `subprocess.PIPE`, `subprocess.DEVNULL`, or a file (or its fd)."""
        mine: list[int] = []  # this end's fds: closed here if the start fails
        theirs: list[int] = []  # the fds the forked process gets: closed here once it has them

        def stream(spec: Any, fd: int, reading: bool) -> IO[bytes] | None:
            if spec is None:
                theirs.append(os.dup(fd))
            elif spec == subprocess.DEVNULL:
                theirs.append(os.open(os.devnull, os.O_RDONLY if reading else os.O_WRONLY))
            elif spec == subprocess.PIPE:
                r, w = os.pipe()
                theirs.append(r if reading else w)
                mine.append(w if reading else r)
                return os.fdopen(w if reading else r, "wb" if reading else "rb")
            else:
                theirs.append(os.dup(spec if isinstance(spec, int) else spec.fileno()))
            return None

        try:
            pipes = [stream(stdin, 0, True), stream(stdout, 1, False), stream(stderr, 2, False)]
            status_r, status_w = os.pipe()  # the fourth fd: where the warm process writes the wait status
            mine.append(status_r)
            theirs.append(status_w)
            request = {"entry": entry, "argv": list(argv), "env": env, "cwd": str(cwd)}
            with self.lock:
                socket.send_fds(self.sock, [json.dumps(request).encode()], theirs)
                answer = self.sock.recv(64)
        except OSError:
            answer = b""
        finally:
            for fd in theirs:
                os.close(fd)
        if not answer:
            for fd in mine:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise RuntimeError(f"the warm process ended (exit code {self.proc.wait()}); its stderr says why")
        return Started(int(answer), status_r, *pipes)

    def close(self) -> None:
        with self.lock:
            self.sock.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_WARM: dict[tuple, Warm] = {}  # by imports and environment, least recently used first
_WARM_LOCK = threading.Lock()


def warm_for(env: dict[str, str], imports: Sequence[str]) -> Warm:
    """This process's warm process for `imports` in `env`, started on first use."""
    key = (tuple(imports), tuple(sorted((k, v) for k, v in env.items() if k not in _VOLATILE)))
    with _WARM_LOCK:
        warm = _WARM.pop(key, None)
        if warm is None or warm.proc.poll() is not None:
            warm = Warm({k: v for k, v in env.items() if k not in _VOLATILE}, imports)
        _WARM[key] = warm
        while len(_WARM) > KEPT:
            _WARM.pop(next(iter(_WARM))).close()
        return warm


@atexit.register
def _close_all() -> None:
    with _WARM_LOCK:
        while _WARM:
            _WARM.popitem()[1].close()


# ---------------------------------------------------------------------------
# The warm process
# ---------------------------------------------------------------------------

_STATUS: dict[int, int] = {}  # pid of a started process -> the write end of its status pipe


def _reap(*_: Any) -> None:
    with contextlib.suppress(ChildProcessError):
        while True:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if not pid:
                return
            fd = _STATUS.pop(pid, None)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.write(fd, str(status).encode())
                os.close(fd)


def _serve(fd: int, imports: Sequence[str]) -> dict | None:
    """Imports `imports`, then forks a process per request. Returns the request in the forked process, None in
    the warm process once its caller is gone and the processes it started have ended."""
    for name in imports:
        importlib.import_module(name)
    sock = socket.socket(fileno=fd)
    signal.signal(signal.SIGCHLD, _reap)
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 4)
        except OSError:
            data, fds = b"", []
        if not data:
            sock.close()
            while _STATUS:  # the processes still running end on their own (their callers are gone)
                time.sleep(0.1)
                _reap()
            return None
        request = json.loads(data)
        # SIGCHLD waits until the new process's status pipe is registered, however soon it ends.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        pid = os.fork()
        if pid == 0:
            sock.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            for status_w in _STATUS.values():
                os.close(status_w)
            _STATUS.clear()
            for target, stream_fd in enumerate(fds[:3]):  # stdin, stdout, stderr
                os.dup2(stream_fd, target)
            for stream_fd in fds:
                os.close(stream_fd)
            os.environ.clear()
            os.environ.update(request["env"])
            os.chdir(request["cwd"])
            return request
        for stream_fd in fds[:3]:
            os.close(stream_fd)
        _STATUS[pid] = fds[3]
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        sock.send(str(pid).encode())


def main(argv: list[str]) -> int:
    request = _serve(int(argv[0]), argv[1:])
    if request is None:
        return 0
    module, function = request["entry"].split(":")
    sys.argv = [module, *request["argv"]]
    return getattr(importlib.import_module(module), function)(request["argv"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
