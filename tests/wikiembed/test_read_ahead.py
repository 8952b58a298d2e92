"""wikiembed.read_ahead: a source's tables read on a thread of their own, ahead of the cleaning."""

from __future__ import annotations

import threading
import time

import pytest

from wikiembed.read_ahead import read_ahead


def _alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "wikiembed-read-ahead"]


def _numbers(n: int, log: dict, fail_at: int | None = None):
    log["thread"] = threading.current_thread().name
    try:
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"bad item {i}")
            log["made"] = i + 1
            yield i
    finally:
        log["closed_on"] = threading.current_thread().name


@pytest.mark.parametrize("depth", [1, 3])
def test_every_item_in_order_made_on_another_thread(depth):
    log: dict = {}
    assert list(read_ahead(_numbers(50, log), depth)) == list(range(50))
    assert log["thread"] == log["closed_on"] == "wikiembed-read-ahead"
    assert not _alive()


def test_it_reads_at_most_depth_items_ahead_of_the_consumer():
    log: dict = {}
    items = read_ahead(_numbers(100, log), depth=2)
    assert next(items) == 0
    deadline = time.monotonic() + 30
    while log.get("made", 0) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # time to read further, were it not waiting
    assert log["made"] == 4  # 0 taken, 1 and 2 in the queue, 3 made and waiting for room
    items.close()
    assert not _alive()


def test_an_error_of_the_source_is_raised_at_its_item():
    log: dict = {}
    got = []
    with pytest.raises(ValueError, match="bad item 7"):
        for item in read_ahead(_numbers(20, log, fail_at=7)):
            got.append(item)
    assert got == list(range(7))
    assert not _alive()


@pytest.mark.parametrize("how", ["break", "raise"])
def test_a_consumer_that_stops_early_stops_and_closes_the_source(how):
    log: dict = {}
    items = read_ahead(_numbers(10_000, log), depth=2)
    try:
        for item in items:
            if item == 3:
                if how == "raise":
                    raise KeyError("consumer")
                break
    except KeyError:
        pass
    items.close()
    assert log["closed_on"] == "wikiembed-read-ahead"  # the generator was closed on the thread that ran it
    assert log["made"] < 10
    assert not _alive()
