"""A generation's articles table, and the diff of a new source version against it.

Every generation keeps `gens/<gen>/articles.parquet`: one row per article of its own snapshot, with
its `id`, a 16-byte digest of the id (`id_key`) and of what its chunks are made from (`content_key`:
title, url and text), and where its chunks are: the generation (`gen`) whose snapshot row (`row`)
it is, so its shard follows from that generation's plan. It is written while the snapshot is
written (in the snapshot's order): about 45 bytes an article on disk. A full generation's table
holds every article; an incremental one's only the articles added or edited, so a day writes the
rows of what changed, not the whole table. A generation's live articles (`Articles.of`) are the
rows of its own table and of the tables of the generations whose files it keeps, each less the
articles it dropped from them (its `dropped.parquet`); they are read whole only by the next source
version's planning, a row group at a time: 48 bytes an article in memory (~310 MB for English
Wikipedia's 6.4 million articles), sorted by integer sorts (`wikiembed.digests`). An incremental
generation's table written by an earlier version of wikiembed also holds the rows of the articles it
kept: only its rows whose `gen` is its own generation are taken as its own.

`Diff` streams the new version's rows past the published generation's live articles, by their
digests (`table_keys` makes them from a table's bytes, no Python string per row; `Articles.find`
searches them as integers): an article whose id and content digest are unchanged
stays where it is; the others (added or edited) are the new
generation's own rows. The articles edited or removed are dropped from the shard files that hold
them (`wikiembed.store` keeps those files, less the dropped ids).

Touches: nothing itself: `wikiembed.snapshots` writes the tables, through `rows_table` and `writer`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wikiembed import digests
from wikiembed.memory import release_free_memory


FILE = "articles.parquet"
SCHEMA = pa.schema([
    ("id", pa.string()), ("id_key", pa.binary(16)), ("content_key", pa.binary(16)), ("gen", pa.string()), ("row", pa.int64()),
])


def id_key(article_id: str) -> bytes:
    return hashlib.blake2b(article_id.encode("utf-8"), digest_size=16).digest()


def content_key(row: dict[str, str]) -> bytes:
    """Digest of what an article's output rows are made from: a change to any of them makes it edited."""
    h = hashlib.blake2b(digest_size=16)
    for part in (row["title"], row["url"], row["text"]):
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.digest()


def _values(array: pa.Array) -> tuple[list[int], memoryview]:
    """(offsets, bytes) of a string or binary array without nulls: value i is bytes[offsets[i]:offsets[i + 1]]."""
    _, offsets_buffer, data_buffer = array.buffers()[:3]
    wide = pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64 if wide else np.int32)[array.offset : array.offset + len(array) + 1]
    return offsets.tolist(), memoryview(data_buffer) if data_buffer is not None else memoryview(b"")


def _column(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def table_keys(rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(`id_key`, `content_key`) of each row of a table of clean rows (columns id, url, title, text),
    as S16 arrays, hashed from the table's own bytes: no Python string is made."""
    n = rows.num_rows
    if n == 0:
        return np.zeros(0, dtype="S16"), np.zeros(0, dtype="S16")
    blake2b = hashlib.blake2b
    io, iv = _values(_column(rows, "id"))
    ids = b"".join([blake2b(iv[io[i] : io[i + 1]], digest_size=16).digest() for i in range(n)])
    (to, tv), (uo, uv), (xo, xv) = (_values(_column(rows, c)) for c in ("title", "url", "text"))
    contents = []
    for i in range(n):  # title \0 url \0 text \0: the bytes `content_key` hashes
        h = blake2b(tv[to[i] : to[i + 1]], digest_size=16)
        h.update(b"\0")
        h.update(uv[uo[i] : uo[i + 1]])
        h.update(b"\0")
        h.update(xv[xo[i] : xo[i + 1]])
        h.update(b"\0")
        contents.append(h.digest())
    return np.frombuffer(ids, dtype="S16"), np.frombuffer(b"".join(contents), dtype="S16")


def _binary16(keys: np.ndarray) -> pa.Array:
    """An S16 array as a binary(16) column (one copy of its bytes)."""
    return pa.Array.from_buffers(pa.binary(16), len(keys), [None, pa.py_buffer(np.ascontiguousarray(keys, dtype="S16").tobytes())])


def rows_table(rows: pa.Table, gen: str, first_row: int, keys: tuple[np.ndarray, np.ndarray] | None = None) -> pa.Table:
    """The table rows of `rows` (clean rows: id, url, title, text), generation `gen`'s snapshot rows
    from `first_row` on; `keys`: their (`id_key`, `content_key`), where the caller has them."""
    ids, contents = keys if keys is not None else table_keys(rows)
    n = rows.num_rows
    return pa.table({
        "id": _column(rows, "id").cast(pa.string()),
        "id_key": _binary16(ids),
        "content_key": _binary16(contents),
        "gen": pa.array([gen] * n, pa.string()),
        "row": pa.array(np.arange(first_row, first_row + n), pa.int64()),
    }, schema=SCHEMA)


def writer(path: Path) -> pq.ParquetWriter:
    return pq.ParquetWriter(path, SCHEMA, compression="zstd")


@dataclass
class Articles:
    """A generation's live articles in memory, sorted by id digest. They are the live rows of one or
    more tables (`layers`: each table's path and, per row of it, whether it is live); `order` gives each
    sorted entry's position among those live rows, taken table by table in file order."""

    layers: list[tuple[Path, np.ndarray]]
    id_key: np.ndarray  # S16, sorted
    content_key: np.ndarray  # S16
    order: np.ndarray  # int64: position of each sorted entry among the live rows
    prefix: np.ndarray  # uint64: each sorted key's first 8 bytes, big-endian (the binary search's keys)

    @classmethod
    def of(cls, tables: Sequence[tuple[str, Path]], dropped: pa.Table | None = None) -> "Articles":
        """The live articles of a generation from the tables `(gen, path)` of itself and of the generations
        whose files it keeps: each table's rows whose `gen` is that generation, less the ids `dropped` (a
        table of `gen`, `id`) lists for it. Each table is read a row group at a time (`gen` as a
        dictionary: one string per generation, not one per article)."""
        layers, keys, contents = [], [], []
        for gen, path in tables:
            live, key, content = _layer(path, gen)
            if dropped is not None:
                gone = dropped.filter(pc.equal(dropped.column("gen"), gen)).column("id").to_pylist()
                if gone:
                    # A binary search of the (few) dropped keys: np.isin would sort a copy of every key.
                    gone_keys = np.unique(np.array([id_key(i) for i in gone], dtype="S16"))
                    at = np.minimum(np.searchsorted(gone_keys, key), len(gone_keys) - 1)
                    live &= gone_keys[at] != key
            layers.append((path, live))
            every_live = bool(live.all())  # a full generation's own table: no copy to make
            keys.append(key if every_live else key[live])
            contents.append(content if every_live else content[live])
            del key, content
        every = _joined(keys)
        content = _joined(contents)
        del keys, contents
        order = digests.sort_order(every)
        # One array at a time: its sorted copy is made, then the unsorted one let go.
        every = every[order]
        content = content[order]
        release_free_memory()  # what the reads and the unsorted arrays held goes back to the OS
        return cls(layers, every, content, order, digests.head(every))

    def find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position, found) of each key of `ids` (S16) among the sorted entries (`wikiembed.digests.search`)."""
        return digests.search(self.id_key, self.prefix, ids)

    def rows(self, positions: np.ndarray) -> pa.Table:
        """`id`, `gen` and `row` of the live rows at `positions` (as `order` numbers them), in that order.
        Only the row groups that hold them are read, one at a time."""
        positions = np.asarray(positions, dtype=np.int64)
        by_position = np.argsort(positions, kind="stable")
        wanted = positions[by_position]
        pieces, start = [], 0
        for path, live in self.layers:
            at = np.flatnonzero(live)  # file rows of the layer's live rows
            first, last = np.searchsorted(wanted, [start, start + len(at)])
            if last > first:
                pieces.extend(_take_rows(path, at[wanted[first:last] - start]))
            start += len(at)
        every = pa.concat_tables(pieces) if pieces else SCHEMA.empty_table().select(["id", "gen", "row"])
        inverse = np.empty_like(by_position)
        inverse[by_position] = np.arange(len(by_position))
        return every.take(pa.array(inverse, pa.int64()))

    def __len__(self) -> int:
        return len(self.id_key)


def _s16(column: pa.ChunkedArray) -> np.ndarray:
    """A binary(16) column as a numpy S16 array (no Python objects)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    raw = np.frombuffer(array.buffers()[1], dtype=np.uint8)[array.offset * 16 : (array.offset + len(array)) * 16]
    return raw.view("S16").copy() if len(array) else np.zeros(0, dtype="S16")


def _layer(path: Path, gen: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(live, id_key, content_key) of every row of one articles table: `live`, whether its `gen` is `gen`."""
    pf = pq.ParquetFile(path, read_dictionary=["gen"])
    n = pf.metadata.num_rows
    live, key, content = np.zeros(n, dtype=bool), np.empty(n, dtype="S16"), np.empty(n, dtype="S16")
    first = 0
    for group in range(pf.num_row_groups):
        table = pf.read_row_group(group, columns=["id_key", "content_key", "gen"])
        end = first + table.num_rows
        live[first:end] = pc.fill_null(pc.equal(table.column("gen"), gen), False).to_numpy(zero_copy_only=False)
        key[first:end], content[first:end] = _s16(table.column("id_key")), _s16(table.column("content_key"))
        first = end
    return live, key, content


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    if len(arrays) == 1:
        return arrays[0]
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype="S16")


def _take_rows(path: Path, file_rows: np.ndarray) -> list[pa.Table]:
    """`id`, `gen`, `row` of the rows `file_rows` (ascending) of an articles table, one row group read at a time."""
    pf = pq.ParquetFile(path)
    pieces, first = [], 0
    for group in range(pf.num_row_groups):
        end = first + pf.metadata.row_group(group).num_rows
        a, b = np.searchsorted(file_rows, [first, end])
        if b > a:
            table = pf.read_row_group(group, columns=["id", "gen", "row"])
            pieces.append(table.take(pa.array(file_rows[a:b] - first, pa.int64())))
        first = end
    return pieces


@dataclass
class Diff:
    """The new version's rows streamed past the published generation's table (`select`)."""

    old: Articles
    seen: np.ndarray = field(init=False)  # per sorted entry: the new version holds that id
    dropped: np.ndarray = field(init=False)  # per sorted entry: edited (or, after `finish`, removed)
    added: int = 0
    edited: int = 0

    def __post_init__(self) -> None:
        self.seen = np.zeros(len(self.old), dtype=bool)
        self.dropped = np.zeros(len(self.old), dtype=bool)

    def select(self, ids: np.ndarray, contents: np.ndarray) -> np.ndarray:
        """Per row of the new version (given by its `id_key` and `content_key`, S16 arrays, in source
        order): whether the new generation embeds it itself (an added or edited article)."""
        if not len(ids):
            return np.zeros(0, dtype=bool)
        pos, found = self.old.find(ids)
        same = found & (self.old.content_key[pos] == contents) if len(self.old) else found
        self.seen[pos[found]] = True
        edited = found & ~same
        self.dropped[pos[edited]] = True
        self.edited += int(edited.sum())
        self.added += int((~found).sum())
        return ~same

    def finish(self) -> dict[str, int]:
        """Mark the articles the new version no longer holds as dropped; the counts of the change."""
        removed = ~self.seen
        self.dropped |= removed
        return {"added": self.added, "edited": self.edited, "removed": int(removed.sum())}

    def dropped_rows(self) -> np.ndarray:
        """Positions (among the old generation's live rows, `Articles.rows`) of the articles dropped, ascending."""
        return np.sort(self.old.order[self.dropped])
