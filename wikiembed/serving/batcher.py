"""A micro-batcher: requests that arrive while a batch is being answered are answered together next.

One worker thread takes the first waiting request, then every other one already queued (up to
MAX_BATCH items), and hands them to `work` as one list: one forward pass of the model, one generation.
There is no timer: a lone request is answered at once, and under load a batch is whatever piled up
during the previous one (sentence-transformers' `encode` batches the same way, by what it is given).

Touches: nothing outside the process (a thread and a queue).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Callable, Generic, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# Requests answered together at most: a batch of this many short queries is one forward pass of tens of
# milliseconds on a CPU core, and the ones behind it wait for at most that.
MAX_BATCH = 64


class MicroBatcher(Generic[Item, Result]):
    """`submit(item)` returns a future of `work([..., item, ...])`'s result for that item."""

    def __init__(self, work: Callable[[Sequence[Item]], Sequence[Result]], max_batch: int = MAX_BATCH,
                 name: str = "wikiembed-batcher") -> None:
        self._work = work
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Item, Future] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.batches = 0  # how many batches were answered, and how many items they held (for tests and /healthz)
        self.items = 0

    def submit(self, item: Item) -> Future:
        future: Future = Future()
        self._queue.put((item, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # close after this batch
                    break
                batch.append(more)
            futures = [f for _, f in batch if f.set_running_or_notify_cancel()]
            items = [i for i, f in batch if f in futures]
            if not items:
                continue
            try:
                results = self._work(items)
            except BaseException as exc:  # noqa: BLE001 - every waiting request gets the error, the thread lives on
                for f in futures:
                    f.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(items)
            for f, r in zip(futures, results):
                f.set_result(r)
