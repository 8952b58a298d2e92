"""Live progress of a run on the terminal: shards done/total and chunks/s.

The flow reports shard completions; embed tasks (threads of the same process)
add chunk counts as they go. On a terminal the bar redraws in place; in a log
(CI, a Prefect worker) it prints one line per finished shard.

Touches: stderr only.
"""

from __future__ import annotations

import sys
import threading
import time


class Progress:
    _current: "Progress | None" = None
    # Held while a line is written: `mute` waits for a line being written, so nothing follows it.
    _writing = threading.Lock()

    def __init__(self, total: int, done: int, stream=None) -> None:  # noqa: ANN001
        stream = stream or sys.stderr  # the stderr of the moment, not of the import
        self.total = total
        self.done = done
        self.failed = 0
        self.chunks = 0
        self.started = time.perf_counter()
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._last_draw = 0.0

    @classmethod
    def start(cls, total: int, done: int) -> "Progress":
        cls._current = cls(total, done)
        cls._current.draw(force=True)
        return cls._current

    @classmethod
    def current(cls) -> "Progress":
        """The run's progress, or a silent one when no run is drawing (e.g. a task run alone)."""
        return cls._current or cls(0, 0, stream=None)

    @property
    def fraction(self) -> float:
        """The share of the store's shards that are done: failed ones are not progress."""
        return 1.0 if self.total == 0 else self.done / self.total

    def add_chunks(self, n: int) -> None:
        with self._lock:
            self.chunks += n
        if self.tty:
            self.draw()

    def shard_finished(self, failed: bool = False) -> None:
        with self._lock:
            if failed:
                self.failed += 1
            else:
                self.done += 1
        self.draw(force=True)

    def line(self) -> str:
        width = 30
        filled = int(width * self.fraction)
        elapsed = time.perf_counter() - self.started
        rate = self.chunks / elapsed if elapsed > 0 else 0.0
        failed = f", {self.failed} failed" if self.failed else ""
        return (
            f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} shards{failed}"
            f" | {self.chunks:,} chunks embedded | {rate:,.0f} chunks/s | {elapsed:,.0f}s"
        )

    def draw(self, force: bool = False) -> None:
        if self.stream is None:
            return
        now = time.perf_counter()
        if not force and now - self._last_draw < 0.5:
            return
        self._last_draw = now
        with Progress._writing:
            if self.stream is None:  # muted meanwhile
                return
            if self.tty:
                self.stream.write("\r" + self.line())
            else:
                self.stream.write(self.line() + "\n")
            self.stream.flush()

    @classmethod
    def mute(cls) -> None:
        """Draw nothing more (a run being stopped: its last line is the stop message, not a bar)."""
        # A timeout, not a plain wait: a signal handler may run in the thread that holds the lock.
        held = cls._writing.acquire(timeout=1.0)
        try:
            current = cls._current
            if current is not None and current.stream is not None:
                if current.tty:
                    current.stream.write("\n")
                    current.stream.flush()
                current.stream = None
        finally:
            if held:
                cls._writing.release()

    def close(self) -> None:
        if self.stream is not None and self.tty:
            self.stream.write("\n")
            self.stream.flush()
        Progress._current = None
