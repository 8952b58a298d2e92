"""Vectors read by row straight from a data file's pages, without reading their row group.

A data file keeps its `embedding` column uncompressed and plain (see `wikiembed.embedding.writer_options`):
each data page is a small header, the list's levels, then `rows x dim` float32 values, one row after
another. So the vector of row r is `dim * 4` bytes at a place found from the page headers alone: a day's
edits ask for a few vectors from every row group of every file (an edited article's unchanged chunks),
and reading whole row groups for them read the whole column (4.5 GB at a tenth of English Wikipedia for
20 MB of vectors).

`RowVectors.open` returns None where a file's column is not laid out so (an older file written with zstd,
a dictionary page, a null vector, a page kind not known here): the caller then reads row groups, as
before. Page headers are Thrift compact structs (the Parquet format's `PageHeader`); only their sizes, page
kind and value count are read.

Touches: nothing (reads a data file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_PLAIN = 0
_HEADER_READ = 256  # bytes read at a page's start for its header (read again, longer, where that is not enough)


class _Layout(Exception):
    """The column is not laid out for reads by row."""


class _Compact:
    """A reader of the Thrift compact protocol, enough to walk a struct and keep its integer fields."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def byte(self) -> int:
        if self.at >= len(self.data):
            raise IndexError("header longer than read")
        self.at += 1
        return self.data[self.at - 1]

    def varint(self) -> int:
        shift = value = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def skip(self, kind: int) -> None:
        if kind in (1, 2):  # a bool held in the field header
            return
        if kind == 3:
            self.byte()
        elif kind in (4, 5, 6):
            self.varint()
        elif kind == 7:
            self.at += 8
        elif kind == 8:
            length = self.varint()  # (read before `self.at` is: the length's own bytes come first)
            self.at += length
        elif kind in (9, 10):
            head = self.byte()
            size = head >> 4 if head >> 4 != 15 else self.varint()
            for _ in range(size):
                self.skip(head & 0x0F)
        elif kind == 11:
            size = self.varint()
            if size:
                kinds = self.byte()
                for _ in range(size):
                    self.skip(kinds >> 4)
                    self.skip(kinds & 0x0F)
        elif kind == 12:
            self.struct()
        else:
            raise _Layout(f"unknown Thrift type {kind}")

    def struct(self, keep: dict[int, str] | None = None) -> dict[str, object]:
        """Walk a struct; return the fields named in `keep` (field id -> name): integers, or a dict for a struct."""
        out: dict[str, object] = {}
        field = 0
        while True:
            head = self.byte()
            if head == 0:
                return out
            kind, delta = head & 0x0F, head >> 4
            field = field + delta if delta else self.zigzag()
            name = (keep or {}).get(field)
            if name is None:
                self.skip(kind)
            elif kind in (4, 5, 6):
                out[name] = self.zigzag()
            elif kind == 12:
                out[name] = self.struct(_NESTED[name])
            else:
                self.skip(kind)
                out[name] = kind == 1  # a bool: true or false is the field's type


_NESTED: dict[str, dict[int, str]] = {
    "v1": {1: "num_values", 2: "encoding"},
    "v2": {1: "num_values", 2: "num_nulls", 3: "num_rows", 4: "encoding", 5: "def_bytes", 6: "rep_bytes", 7: "is_compressed"},
}
_PAGE_HEADER = {1: "type", 2: "uncompressed", 3: "compressed", 5: "v1", 8: "v2"}


def _all_equal(levels: bytes, value: int, count: int) -> bool:
    """Whether RLE/bit-packed hybrid `levels` (bit width from `value`) hold `value` `count` times: RLE runs only."""
    reader, seen = _Compact(levels), 0
    width = max(1, (value.bit_length() + 7) // 8)
    while seen < count:
        head = reader.varint()
        if head & 1:  # bit-packed: not how a run of one repeated level is written
            return False
        run = head >> 1
        got = int.from_bytes(levels[reader.at : reader.at + width], "little")
        reader.at += width
        if got != value or run == 0:
            return False
        seen += run
    return seen == count


@dataclass(frozen=True)
class _Pages:
    first_rows: np.ndarray  # first row of each page (within the file), then the file's row count
    offsets: np.ndarray  # byte offset of each page's first value


class RowVectors:
    """Row-addressed reads of one fixed-size float32 list column of a parquet file."""

    def __init__(self, path: Path, dim: int, pages: _Pages) -> None:
        self.path, self.dim, self._pages = path, dim, pages

    @classmethod
    def open(cls, path: Path, column: str = "embedding") -> "RowVectors | None":
        """The column's page map, or None where it cannot be read by row (see the module's docstring)."""
        try:
            return cls._open(Path(path), column)
        except (_Layout, IndexError, ValueError, KeyError, OSError):
            return None

    @classmethod
    def _open(cls, path: Path, column: str) -> "RowVectors":
        meta = pq.ParquetFile(path).metadata
        arrow = meta.schema.to_arrow_schema()
        field = arrow.field(column)
        if not hasattr(field.type, "list_size") or str(field.type.value_type) != "float":
            raise _Layout(f"{column} is not a fixed-size list of float32")
        dim = field.type.list_size
        leaf = f"{column}.list.element"
        index = next(i for i in range(meta.num_columns) if meta.schema.column(i).path == leaf)
        max_def, max_rep = meta.schema.column(index).max_definition_level, meta.schema.column(index).max_repetition_level
        first_rows, offsets = [], []
        row = 0
        with open(path, "rb") as fh:
            fd = fh.fileno()
            for g in range(meta.num_row_groups):
                chunk = meta.row_group(g).column(index)
                if chunk.compression != "UNCOMPRESSED" or chunk.dictionary_page_offset is not None:
                    raise _Layout("compressed or dictionary-encoded")
                at, end = chunk.data_page_offset, chunk.data_page_offset + chunk.total_compressed_size
                rows_in_group = 0
                while at < end:
                    header, size = cls._header(fd, at)
                    body = at + size
                    if header.get("type") == _DATA_PAGE:
                        v1 = header["v1"]
                        if v1.get("encoding") != _PLAIN:
                            raise _Layout("not plain")
                        values = int(v1["num_values"])
                        first_value = body
                        if max_rep:  # each level section: its length (4 bytes), then the levels
                            first_value += 4 + int.from_bytes(os.pread(fd, 4, first_value), "little")
                        if max_def:
                            length = int.from_bytes(os.pread(fd, 4, first_value), "little")
                            if not _all_equal(os.pread(fd, length, first_value + 4), max_def, values):
                                raise _Layout("a null among the values")
                            first_value += 4 + length
                    elif header.get("type") == _DATA_PAGE_V2:
                        v2 = header["v2"]
                        if v2.get("encoding") != _PLAIN or v2.get("num_nulls", 0) or v2.get("is_compressed", True):
                            raise _Layout("not plain, or nulls, or compressed")
                        values = int(v2["num_values"])
                        first_value = body + int(v2["rep_bytes"]) + int(v2["def_bytes"])
                    else:
                        raise _Layout(f"page type {header.get('type')}")
                    if values % dim or first_value + values * 4 != body + int(header["compressed"]):
                        raise _Layout("a page that does not hold whole vectors")
                    first_rows.append(row + rows_in_group)
                    offsets.append(first_value)
                    rows_in_group += values // dim
                    at = body + int(header["compressed"])
                if rows_in_group != meta.row_group(g).num_rows:
                    raise _Layout("row count differs from the metadata")
                row += rows_in_group
        first_rows.append(row)
        return cls(path, dim, _Pages(np.array(first_rows, dtype=np.int64), np.array(offsets, dtype=np.int64)))

    @staticmethod
    def _header(fd: int, at: int) -> tuple[dict[str, object], int]:
        length = _HEADER_READ
        while True:
            data = os.pread(fd, length, at)
            try:
                reader = _Compact(data)
                header = reader.struct(_PAGE_HEADER)
                return header, reader.at
            except IndexError:
                if len(data) < length:
                    raise _Layout("file ends inside a page header") from None
                length *= 4

    @property
    def rows(self) -> int:
        return int(self._pages.first_rows[-1])

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of `rows` (row numbers in the file), [len(rows), dim] float32, in the order asked."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.rows):
            raise IndexError(f"{self.path}: rows outside 0..{self.rows - 1}")
        page = np.searchsorted(self._pages.first_rows, rows, side="right") - 1
        where = self._pages.offsets[page] + (rows - self._pages.first_rows[page]) * (self.dim * 4)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        width = self.dim * 4
        with open(self.path, "rb") as fh:
            fd = fh.fileno()
            for i, offset in enumerate(where.tolist()):
                data = os.pread(fd, width, offset)
                if len(data) != width:
                    raise OSError(f"{self.path}: short read at byte {offset}")
                out[i] = np.frombuffer(data, dtype="<f4")
        return out
