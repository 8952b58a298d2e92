"""The checks and repairs every row goes through on its way into the snapshot, whatever its format:
rows that cannot be embedded are skipped with a reason, the rest repaired (and counted), duplicate ids
kept once. Arrow tables of raw rows are cleaned in Arrow where their rows need nothing (`_Cleaner.table`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wikiembed.digests import search_sorted
from wikiembed.sources.base import OPTIONAL, REQUIRED, SNAPSHOT_SCHEMA, RowReport, Source, check_columns as _check_columns, reader_for

_SURROGATE = re.compile("[\ud800-\udfff]")


def _as_text(value: Any) -> tuple[str | None, str | None]:
    """Return (text, repair note) for a field value; (None, None) for a value that can't be text."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8"), None
        except UnicodeDecodeError:
            return bytes(value).decode("utf-8", errors="replace"), "invalid UTF-8 replaced with U+FFFD"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value), "number converted to string"
    return None, None


def clean_rows(batches: Iterable[list[dict]], source: Source, report: RowReport) -> Iterator[dict[str, str]]:
    """Validate rows one by one: skip what can't be embedded (with a reason), repair the rest."""
    cleaner = _Cleaner(source, report)
    for batch in batches:
        cleaner.seen.settle()
        for raw in batch:
            if not cleaner.count():
                return
            out = cleaner.row(raw)
            if out is not None:
                yield out


# A value holding one of these characters is not blank: none of them is whitespace to Python's
# str.strip (printable ASCII but the space, and every letter and digit).
_NOT_BLANK = r"[!-~]|\p{L}|\p{N}"


def _id_digests(column: pa.ChunkedArray) -> np.ndarray:
    """`_Cleaner._new_id`'s digest of each value of a string column (uint64)."""
    out: list[np.ndarray] = []
    blake2b = hashlib.blake2b
    for chunk in column.chunks:
        _, offsets_buffer, data_buffer = chunk.buffers()[:3]
        wide = pa.types.is_large_string(chunk.type)
        offsets = np.frombuffer(offsets_buffer, dtype=np.int64 if wide else np.int32)[chunk.offset : chunk.offset + len(chunk) + 1].tolist()
        data = memoryview(data_buffer) if data_buffer is not None else memoryview(b"")
        raw = b"".join([blake2b(data[offsets[i] : offsets[i + 1]], digest_size=8).digest() for i in range(len(chunk))])
        out.append(np.frombuffer(raw, dtype="<u8"))
    return np.concatenate(out).astype(np.uint64) if out else np.zeros(0, dtype=np.uint64)


def _holding_nul(column: pa.ChunkedArray) -> np.ndarray:
    """Positions of the values of a string column that hold a NUL character (one scan of its bytes)."""
    found, base = [], 0
    for chunk in column.chunks:
        _, offsets_buffer, data_buffer = chunk.buffers()[:3]
        wide = pa.types.is_large_string(chunk.type)
        offsets = np.frombuffer(offsets_buffer, dtype=np.int64 if wide else np.int32)[chunk.offset : chunk.offset + len(chunk) + 1]
        if data_buffer is not None and len(chunk):
            data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]]
            at = np.flatnonzero(data == 0)
            if len(at):
                found.append(base + np.unique(np.searchsorted(offsets, at + offsets[0], side="right") - 1))
        base += len(chunk)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


class _SeenIds:
    """The id digests of the rows taken so far (`_Cleaner._new_id`'s): the latest in a set, the others
    in one sorted uint64 array, 8 bytes an id where a set of Python ints takes about 75, so that
    checking a source for duplicate ids holds a small share of what its snapshot holds on disk. A
    bitmap over the array (16 to 32 bits an id, bit `digest & mask` set) answers most digests that
    are not in it without a search: a row-by-row source pays one set and one bit lookup a row."""

    # Digests kept in the set before `settle` moves them into the array.
    RECENT = 1 << 17

    def __init__(self) -> None:
        self.recent: set[int] = set()
        self.settled = np.zeros(0, dtype=np.uint64)
        self._bits = bytearray(1)
        self._mask = 7

    def __contains__(self, digest: int) -> bool:
        if digest in self.recent:
            return True
        slot = digest & self._mask
        if not self._bits[slot >> 3] >> (slot & 7) & 1:
            return False
        at = int(self.settled.searchsorted(np.uint64(digest)))
        return at < len(self.settled) and int(self.settled[at]) == digest

    def add(self, digest: int) -> None:
        self.recent.add(digest)

    def settled_mask(self, digests: np.ndarray) -> np.ndarray:
        """Per digest (uint64): whether it is in the array (it stays so until the next `settle`)."""
        if not len(self.settled) or not len(digests):
            return np.zeros(len(digests), dtype=bool)
        at = np.minimum(search_sorted(self.settled, digests), len(self.settled) - 1)
        return self.settled[at] == digests

    def settle(self) -> None:
        """Move the set's digests into the array once it holds RECENT of them (called between batches)."""
        if len(self.recent) < self.RECENT:
            return
        new = np.sort(np.fromiter(self.recent, dtype=np.uint64, count=len(self.recent)))
        self.settled = np.insert(self.settled, np.searchsorted(self.settled, new), new)
        self.recent = set()
        if 8 * len(self._bits) >= 16 * len(self.settled):
            self._mark(new)
            return
        size = 1 << (32 * len(self.settled) - 1).bit_length()
        self._bits, self._mask = bytearray(size // 8), size - 1
        for at in range(0, len(self.settled), 1 << 20):
            self._mark(self.settled[at : at + (1 << 20)])

    def _mark(self, digests: np.ndarray) -> None:
        slots = digests & np.uint64(self._mask)
        np.bitwise_or.at(np.frombuffer(self._bits, dtype=np.uint8), (slots >> np.uint64(3)).astype(np.intp),
                         (np.uint8(1) << (slots & np.uint64(7)).astype(np.uint8)))


class _Cleaner:
    """`clean_rows`' checks and repairs, with what they carry from row to row (the row count, the ids seen)."""

    def __init__(self, source: Source, report: RowReport) -> None:
        mapping = dict(source.columns)
        self.key = {c: mapping.get(c, c) for c in REQUIRED + OPTIONAL}
        self.source, self.report = source, report
        self.seen = _SeenIds()
        # Readers with a schema check it before their first batch; row-wise ones leave it to the first row.
        self.check_first = reader_for(source.kind).checks_first_row
        self.index = 0

    def count(self) -> bool:
        """Count the next row; False once past --limit."""
        self.index += 1
        return self.source.limit is None or self.index <= self.source.limit

    def _new_id(self, row_id: str) -> bool:
        digest = int.from_bytes(hashlib.blake2b(row_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
        if digest in self.seen:
            self.report.skip(self.index - 1, row_id, "duplicate id (first occurrence kept)")
            return False
        self.seen.add(digest)
        return True

    def row(self, raw: dict) -> dict[str, str] | None:
        """The clean row of the counted row `raw`, or None where it is skipped (counted in the report)."""
        report, key, index = self.report, self.key, self.index
        if self.check_first:
            _check_columns(self.source, raw.keys(), self.source.spec)
            self.check_first = False
        raw_id = raw.get(key["id"])
        row_id, note = _as_text(raw_id)
        if note == "number converted to string":
            note = "id converted to string"
        if note:
            report.repaired[note] += 1
        if row_id is None or not row_id.strip():
            report.skip(index - 1, raw_id, "missing or non-string id" if key["id"] in raw else "no id column")
            return None
        text, note = _as_text(raw.get(key["text"]))
        if text is None or isinstance(raw.get(key["text"]), (int, float)):
            reason = "null text" if raw.get(key["text"]) is None else "text is not a string"
            report.skip(index - 1, row_id, reason)
            return None
        if note:
            report.repaired[note] += 1
        if "\x00" in text:
            text = text.replace("\x00", "")
            report.repaired["NUL bytes removed"] += 1
        if not text.strip():
            report.skip(index - 1, row_id, "blank text")
            return None
        if not self._new_id(row_id):
            return None
        out = {"id": row_id, "text": text}
        for col in OPTIONAL:
            value, note = _as_text(raw.get(key[col]))
            if value is None:
                report.repaired[f"missing {col} set to empty"] += 1
                value = ""
            elif note:
                report.repaired[note] += 1
            out[col] = value.replace("\x00", "")
        # Lone surrogates (from JSON escapes) can't be written as UTF-8: replace them.
        for col, value in out.items():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                out[col] = _SURROGATE.sub("\ufffd", value)
                report.repaired["invalid UTF-8 replaced with U+FFFD"] += 1
        report.rows += 1
        return out

    def _plain(self, table: pa.Table) -> np.ndarray | None:
        """Per row of an Arrow table of raw rows: True where `row` would take it exactly as it is (string
        id and text that are not blank, string url and title, no NUL in text, url or title, valid
        UTF-8), so it needs no Python object; None where no row can be taken so."""
        columns = {}
        for c in REQUIRED + OPTIONAL:
            if self.key[c] not in table.column_names:
                return None
            column = table.column(self.key[c])
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                return None
            try:
                column.validate(full=True)  # UTF-8 a Python string can hold (else the row-by-row path says what is wrong)
            except pa.ArrowInvalid:
                return None
            columns[c] = column
        plain = pc.and_(pc.match_substring_regex(columns["id"], _NOT_BLANK), pc.match_substring_regex(columns["text"], _NOT_BLANK))
        for c in ("text", *OPTIONAL):
            plain = pc.and_(plain, pc.is_valid(columns[c]))
        plain = pc.fill_null(plain, False).to_numpy(zero_copy_only=False).copy()
        for c in ("text", *OPTIONAL):
            plain[_holding_nul(columns[c])] = False
        return plain

    def table(self, raw: pa.Table) -> pa.Table | None:
        """The clean rows of a table of raw rows, as a table of SNAPSHOT_SCHEMA (the rows `row` gives, in
        order); None once past --limit. Rows that need nothing stay in Arrow; the others go through `row`."""
        if self.source.limit is not None:
            left = self.source.limit - self.index
            if left <= 0:
                self.index += 1
                return None
            raw = raw.slice(0, left)
        plain = self._plain(raw)
        seen = self.seen
        seen.settle()
        if plain is not None:  # the id digests `_new_id` makes, from the id column's bytes (valid UTF-8: the same bytes)
            found = _id_digests(raw.column(self.key["id"]))
            digests, settled = found.tolist(), seen.settled_mask(found).tolist()
        taken: list[int] = []  # rows taken as they are
        cleaned: list[tuple[int, dict[str, str]]] = []  # rows cleaned one by one
        first, recent = self.index, seen.recent
        for i in range(raw.num_rows):
            if plain is not None and plain[i]:
                if not settled[i] and digests[i] not in recent:
                    recent.add(digests[i])
                    taken.append(i)
                else:
                    self.report.skip(first + i, raw.column(self.key["id"])[i].as_py(), "duplicate id (first occurrence kept)")
                continue
            self.index = first + i + 1
            out = self.row(raw.slice(i, 1).to_pylist()[0])
            if out is not None:
                cleaned.append((i, out))
        self.index = first + raw.num_rows
        self.report.rows += len(taken)
        if not taken:
            return pa.Table.from_pylist([r for _, r in cleaned], SNAPSHOT_SCHEMA)
        as_is = raw.select([self.key[c] for c in SNAPSHOT_SCHEMA.names]).rename_columns(SNAPSHOT_SCHEMA.names)
        as_is = as_is.cast(SNAPSHOT_SCHEMA) if as_is.schema != SNAPSHOT_SCHEMA else as_is
        if not cleaned:
            return as_is if len(taken) == raw.num_rows else as_is.take(pa.array(taken, pa.int64()))
        parts = pa.concat_tables([as_is.take(pa.array(taken, pa.int64())), pa.Table.from_pylist([r for _, r in cleaned], SNAPSHOT_SCHEMA)])
        order = np.argsort(np.array(taken + [i for i, _ in cleaned], dtype=np.int64), kind="stable")
        return parts.take(pa.array(order))
