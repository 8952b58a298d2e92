"""Feedback from the search service, appended to a judged-queries file that the improve loop reads as it is.

A record is one line of jsonl in the format of `wikiembed.queries` (what `eval --queries`, `finetune
--pairs` and `improve --pairs` read): `query`, then `id`, `ids` or `id` + `chunk_index`, and `relevant`
(a row marked `"relevant": false` is never read as a positive), plus fields the readers ignore: the hit's
`rank`, the `generation` it came from, and the `time` it was recorded.

Each line is written whole, by one `write` under one lock (and an advisory `flock`, for a second process
appending to the same file), and is on disk (`fsync`) before `append` returns, so a 2xx means the record
survives a crash. Writers that arrive while one fsyncs share the next fsync (a group commit): 16 clients
at once cost about one fsync per round, not one per record. A write that fails halfway is cut back off
the file, and a file left with a torn last line by a crash is repaired when it is opened, so the readers
never meet a partial line.

Touches: the one feedback file given at start-up (created, appended, its torn tail cut); nothing a request names.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from wikiembed.errors import InputError

# What a record may carry: a query as long as a search's, a few ids, ids of store-sized length.
MAX_QUERY_CHARS = 1000
MAX_IDS = 100
MAX_ID_CHARS = 512
SUFFIXES = (".jsonl", ".ndjson")


class FeedbackRecord(BaseModel):
    """One judgement: a query and the article (`id`), articles (`ids`) or chunk (`id` + `chunk_index`) it is about."""

    # Strict: "yes" is not true and "3" is not a chunk number; a record says what it means or is refused.
    model_config = ConfigDict(extra="forbid", strict=True)

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="The query as it was searched.")
    id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS, description="The article judged (the store's `id`).")
    ids: list[str] | None = Field(None, min_length=1, max_length=MAX_IDS, description="Several articles judged alike.")
    chunk_index: int | None = Field(None, ge=0, description="With `id`: the one chunk judged.")
    relevant: bool = Field(description="true: it answers the query; false: it does not.")
    rank: int | None = Field(None, ge=1, le=1000, description="Where the hit was in the answer (1: first).")
    generation: str | None = Field(None, max_length=64, pattern=r"^[0-9A-Za-z._-]*$", description="The generation the hit came from.")

    @model_validator(mode="after")
    def _one_target(self) -> "FeedbackRecord":
        if not self.query.strip():
            raise ValueError("query: the query text is blank")
        if (self.id is None) == (self.ids is None):
            raise ValueError('give exactly one of "id" (an article, with "chunk_index" for one chunk) or "ids" (several articles)')
        if self.chunk_index is not None and self.id is None:
            raise ValueError('"chunk_index" needs "id" (the article the chunk belongs to)')
        if self.ids is not None and any(not i or len(i) > MAX_ID_CHARS for i in self.ids):
            raise ValueError(f'ids: every id is 1 to {MAX_ID_CHARS} characters')
        return self

    def line(self, generation: str) -> dict[str, Any]:
        """The jsonl row: the judged-queries fields first, then what the readers ignore."""
        row: dict[str, Any] = {"query": self.query.strip()}
        if self.id is not None:
            row["id"] = self.id
            if self.chunk_index is not None:
                row["chunk_index"] = self.chunk_index
        else:
            row["ids"] = list(self.ids or [])
        row["relevant"] = self.relevant
        if self.rank is not None:
            row["rank"] = self.rank
        row["generation"] = self.generation or generation
        row["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return row


class FeedbackLog:
    """The feedback file, open for appending whole, fsynced lines."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().absolute()
        if self.path.suffix.lower() not in SUFFIXES:
            raise InputError(f"--feedback {self.path}: give a .jsonl file (the judged-queries format improve --pairs reads).")
        if self.path.is_dir():
            raise InputError(f"--feedback {self.path} is a folder; give a .jsonl file to append to.")
        if not self.path.parent.is_dir():
            raise InputError(f"--feedback {self.path}: its folder {self.path.parent} does not exist; create it first.")
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"--feedback {self.path}: cannot open it for appending ({exc.strerror}).") from None
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._written = 0  # records written (to the page cache), and of those, records known to be on disk
        self._synced = 0
        self.repaired = self._repair_tail()

    def _repair_tail(self) -> int:
        """Cut a last line that has no newline (a write torn by a crash); returns the bytes cut."""
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                size = os.fstat(self._fd).st_size
                if size == 0 or os.pread(self._fd, 1, size - 1) == b"\n":
                    return 0
                tail = min(size, 1 << 20)
                chunk = os.pread(self._fd, tail, size - tail)
                cut = chunk.rfind(b"\n")
                keep = size - tail + cut + 1 if cut >= 0 else (0 if tail == size else size)
                os.ftruncate(self._fd, keep)
                os.fsync(self._fd)
                return size - keep
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def append(self, row: dict[str, Any]) -> None:
        """Write one record as one line and return once it is on disk."""
        data = (json.dumps(row, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode("utf-8")
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                start = os.fstat(self._fd).st_size
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(self._fd, view):]
                except OSError:
                    os.ftruncate(self._fd, start)  # no partial line stays behind (a full disk, say)
                    raise
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._written += 1
            mine = self._written
        with self._sync_lock:
            if self._synced < mine:
                upto = self._written  # every record counted here is already written
                os.fsync(self._fd)
                self._synced = upto

    def close(self) -> None:
        os.close(self._fd)
