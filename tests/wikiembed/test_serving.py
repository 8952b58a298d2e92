"""The search service's parts that need no store: the feedback file, the micro-batcher, the served link, and the
judged-queries reader's handling of "relevant": false."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from wikiembed.errors import InputError
from wikiembed.queries import read_queries
from wikiembed.serving.batcher import MicroBatcher
from wikiembed.serving.feedback import FeedbackLog, FeedbackRecord
from wikiembed.serving.link import check_link, point_link


def test_feedback_lines_are_whole_once_each_and_a_torn_tail_is_cut(tmp_path):
    path = tmp_path / "feedback.jsonl"
    path.write_bytes(b'{"query": "a", "id": "1", "relevant": true}\n{"query": "b", "id"')
    log = FeedbackLog(path)
    assert log.repaired == len(b'{"query": "b", "id"')

    def write(c: int) -> None:
        for i in range(50):
            # Lines of about 9 kB: longer than one pipe buffer, so only the lock keeps them whole.
            ids = [f"{i}-{n}-" + "y" * 400 for n in range(20)]
            log.append(FeedbackRecord(query=f"writer {c} record {i} " + "x" * 900, ids=ids, relevant=i % 3 != 0).line("g1"))

    threads = [threading.Thread(target=write, args=(c,)) for c in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 1 + 800 + 1
    rows = [json.loads(line) for line in lines[1:-1]]
    assert sorted(r["query"].split(" x")[0] for r in rows) == sorted(f"writer {c} record {i}" for c in range(16) for i in range(50))
    assert all(r["generation"] == "g1" and r["time"].endswith("Z") for r in rows)
    assert len(read_queries(path)) == 1 + sum(1 for _ in range(16) for i in range(50) if i % 3 != 0)


def test_the_reader_never_reads_relevant_false_as_a_positive(tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [{"query": "q1", "id": "1", "relevant": True, "rank": 2, "generation": "g", "time": "t"},
            {"query": "q1", "id": "2", "chunk_index": 0, "relevant": False},
            {"query": "q2", "ids": ["3"], "relevant": False}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [(q.text, q.relevant) for q in read_queries(path)] == [("q1", frozenset({("1", None)}))]
    path.write_text(json.dumps(rows[2]) + "\n")
    with pytest.raises(InputError, match='only rows marked "relevant": false'):
        read_queries(path)
    path.write_text(json.dumps({"query": "q", "id": "1", "relevant": "no"}) + "\n")
    with pytest.raises(InputError, match='line 1: "relevant"'):
        read_queries(path)


def test_requests_queued_during_a_batch_are_answered_together_next():
    gate = threading.Event()
    seen: list[list[int]] = []

    def work(items):
        seen.append(list(items))
        gate.wait(10)
        if -1 in items:
            raise ValueError("bad item")
        return [i * 10 for i in items]

    batcher = MicroBatcher(work)
    first = batcher.submit(1)
    while not seen:
        time.sleep(0.01)
    rest = [batcher.submit(i) for i in range(2, 6)]
    gate.set()
    assert first.result(5) == 10 and [f.result(5) for f in rest] == [20, 30, 40, 50]
    assert seen == [[1], [2, 3, 4, 5]]
    with pytest.raises(ValueError, match="bad item"):
        batcher.submit(-1).result(5)
    assert batcher.submit(7).result(5) == 70  # the thread lives on after a failed batch
    batcher.close()


def test_the_served_link_is_repointed_atomically_and_never_replaces_a_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    link = tmp_path / "served"
    assert point_link(link, tmp_path / "a") == {"link": str(link), "store": str((tmp_path / "a").resolve())}
    point_link(link, tmp_path / "b")
    assert os.readlink(link) == "b" and not list(tmp_path.glob(".served.tmp-*"))
    with pytest.raises(InputError, match="is a folder, not a link"):
        check_link(tmp_path / "a")
    with pytest.raises(InputError, match="Modal Volume"):
        check_link(link, "wikiembed-store")
