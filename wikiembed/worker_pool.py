"""Worker processes on every core: the one kind of process pool wikiembed starts, with two uses.

`wikiembed.tokenizing` sends parts of the tokenizing work to one (a worker per core), and
`wikiembed.shard_workers` runs whole shards in another (`--shard-workers` of them). Each is a
`WorkerPool`: made on first use, spawned (the parent may already run tokenizer and torch threads,
which fork would copy half-way), its workers leave once orphaned (a SIGKILLed parent runs no
cleanup) and ignore the terminal's Ctrl-C (it reaches the whole process group: the parent stops the
run); a pool that broke (a worker died) is dropped, and the next use starts a fresh one.

Touches: worker processes, nothing else.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor

# How often a worker checks that its parent is still alive (seconds).
PARENT_CHECK_S = 1.0


def cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _worker_start(parent: int) -> None:
    # Each worker is one core: the tokenizer's own thread pool would only oversubscribe them.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # A worker waits for work forever, even after its parent is killed (SIGKILL runs no
    # cleanup): it leaves as soon as it has been orphaned instead.
    def leave_when_orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=leave_when_orphaned, name="parent-watch", daemon=True).start()
    # A terminal's Ctrl-C reaches the whole process group: the parent stops the run, and a worker
    # leaves once orphaned; it must not die on its own with a traceback on the terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class WorkerPool:
    """A pool of spawned worker processes, made on first use (`get`) and shared by the threads of
    this process; `executor` is the pool now running (None before the first use and after a drop)."""

    def __init__(self) -> None:
        self.executor: ProcessPoolExecutor | None = None
        self.workers = 0
        self._lock = threading.Lock()
        self._drop_lock = threading.Lock()

    def get(self, workers: int) -> ProcessPoolExecutor:
        """The pool of `workers` processes: the running one, or a new one (a pool of another size is let go)."""
        with self._lock:
            if self.executor is not None and self.workers != workers:
                self.executor.shutdown(wait=False)
                self.executor = None
            if self.executor is None:
                self.executor = ProcessPoolExecutor(
                    max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_start, initargs=(os.getpid(),)
                )
                self.workers = workers
            return self.executor

    def drop(self, broken: ProcessPoolExecutor, *, wait: bool = False) -> None:
        """Let go of the pool `broken` (only that one: callers failing together must not drop the fresh one a
        retry made). `wait`: return only once its workers are gone and reaped (an unreaped worker still answers
        as alive, so the temp files it left would not yet count as a dead process's). The first caller's
        shutdown forgets the executor's manager thread, so callers that broke together take turns here and
        each returns only after the join."""
        with self._lock:
            if self.executor is broken:
                self.executor = None
        if not wait:
            broken.shutdown(wait=False, cancel_futures=True)
            return
        with self._drop_lock:
            broken.shutdown(wait=True, cancel_futures=True)

    def release(self) -> None:
        """End the workers and wait for them (a new `get` starts fresh ones)."""
        with self._lock:
            executor, self.executor = self.executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
