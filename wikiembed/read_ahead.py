"""An iterator read on a thread of its own, a few items ahead of its consumer.

Planning reads the whole source: Arrow decodes each batch of the parquet file without holding the
GIL, then the rows are cleaned and hashed in Python, which holds it. Read ahead, the next batch is
decoded while this one is hashed, on another core (at a tenth of English Wikipedia the decoding is
about a quarter of a day-2 run's planning).

Touches: nothing (a thread of this process).
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator, TypeVar

T = TypeVar("T")

_END = object()
_POLL_S = 0.1  # how often a reader blocked on a full queue looks whether the consumer has gone


def read_ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """The items of `items`, in order, produced on a thread of their own up to `depth` items ahead.

    An exception raised by `items` is raised here, at the item it stopped at. If the consumer stops
    early (it breaks out, raises, or closes this generator), the reader stops after the item it is
    producing, `items` is closed on its own thread, and this waits for that."""
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="wikiembed-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
