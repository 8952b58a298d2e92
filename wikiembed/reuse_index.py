"""The reuse index: a published generation's vectors, found by the content of their chunk text.

A new source version re-embeds only chunks whose text changed: every other chunk's vector is
taken from the published generation through this index. One index per (store, generation) per
process (`shared`): the shard tasks of a run (threads), a shard worker process or a Modal container
running many shards all load it once and share it; `release` drops it when a run ends.

Its keys are the key files kept beside the generation's data files (`wikiembed.chunk_keys`: 16
bytes a row, written with each data file), so loading it reads no chunk text; a data file without
valid keys (one written before they were kept) has them made from its text, and `save` keeps them.
Its vectors are read only where a chunk is found: each one by its row from the data file's pages
(`wikiembed.vector_rows`), or, in a file whose `embedding` column is compressed (one written before
data files kept it plain), the `embedding` column of the row groups that hold the rows asked for.

Touches: the indexed generation's data files, markers and key files (read), and the key files of
its data files that have none (written by `save`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wikiembed import chunk_keys, digests
from wikiembed.atomic import remove
from wikiembed.memory import release_free_memory
from wikiembed.store import Store
from wikiembed.store_files import LOCAL, StoreSync
from wikiembed.vector_rows import RowVectors


class ReuseIndex:
    """Vectors of the published generation, found by chunk-text content key.

    Keys are 16-byte blake2b digests held in one sorted numpy array with each key's position among the
    generation's rows, file after file (20 bytes per chunk), loaded from the data files' key files.
    Vectors are read from the old data files on demand: by row where the file allows it, else only the row
    groups that hold a row asked for, only their `embedding` column, the latest row groups read cached up to
    _CACHE_BYTES.
    """

    # Vectors of the row groups read last kept for the next lookups (at least the last group): a
    # lookup reads each group it needs once, and the next one mostly needs other groups (a day's edits
    # are spread over every file), so little more than the last group is kept. Groups are read one at a
    # time: two at once on threads read a 1/10 day's 13,440 reused vectors in 12.1 s instead of 13.8 s,
    # holding 117 MB more.
    _CACHE_BYTES = 32 << 20
    # The whole-generation index file an earlier version kept in the indexed generation's folder:
    # no longer read (the per-file key files replace it), and removed by `save`.
    LEGACY = "reuse-index.npz"

    def __init__(self, store: Store) -> None:
        self.store = store
        self._keys: np.ndarray | None = None
        self._at: np.ndarray | None = None  # per key: its row's position among every file's rows, in file order
        self._file_starts = np.zeros(1, dtype=np.int64)  # first position of each file (and the row count)
        self._files: list[Path] = []  # data files, in the generation's order
        self._starts: dict[int, np.ndarray] = {}  # file index -> first row of each row group (and the row count)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._by_row: dict[int, RowVectors | None] = {}  # file index -> its page map, where it can be read by row
        self._lock = threading.Lock()  # shard tasks run as threads and share one index
        self.built_from_text = 0  # data files whose keys were made from their text (no valid key file)

    def _build(self) -> None:
        parts = self.store.parts()
        # Every row of a kept file, dropped articles' too: a vector depends only on its chunk's text. The
        # keys go straight into one array (a file whose row count is not its marker's grows it).
        every = np.empty(sum(part.chunks for part in parts), dtype="S16")
        starts = [0]
        for part in parts:
            found = chunk_keys.read(part.path, part.sha256, part.chunks)
            if found is None:
                found = chunk_keys.from_text(part.path)
                self.built_from_text += 1
            end = starts[-1] + len(found)
            if end > len(every):
                every = np.concatenate([every, np.empty(end - len(every), dtype="S16")])
            every[starts[-1] : end] = found
            starts.append(end)
            self._files.append(part.path)
            del found
        every = every[: starts[-1]]
        order = digests.sort_order(every)
        self._keys = every[order]
        del every
        self._at = order.astype(np.uint32 if len(order) < 2**32 else np.int64)
        del order
        self._file_starts = np.array(starts, dtype=np.int64)
        release_free_memory()

    def load(self) -> None:
        """Load the keys now (else the first lookup does)."""
        with self._lock:
            if self._keys is None:
                self._build()

    def save(self) -> int:
        """Make sure every data file of the generation has its key file, writing the missing ones
        from the file's text, so the processes and containers that reuse this generation load keys
        instead of reading old texts; returns how many were written (none for a generation whose
        files were all written with their keys)."""
        with self._lock:
            written = sum(chunk_keys.ensure(part.path, part.sha256, part.chunks) for part in self.store.parts())
            legacy = self.store.dir / self.LEGACY
            if legacy.exists():
                remove(legacy)
            return written

    def _row_groups(self, file_index: int) -> np.ndarray:
        """First row of each row group of a data file, then its row count."""
        if file_index not in self._starts:
            meta = pq.ParquetFile(self._files[file_index]).metadata
            sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            self._starts[file_index] = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        return self._starts[file_index]

    def _direct(self, file_index: int) -> RowVectors | None:
        """The file's vectors addressed by row, or None where its layout does not allow it (then row groups are read)."""
        if file_index not in self._by_row:
            self._by_row[file_index] = RowVectors.open(self._files[file_index])
        return self._by_row[file_index]

    def _group(self, file_index: int, group: int) -> np.ndarray:
        """The vectors of one row group of a data file ([rows, dim] float32), cached."""
        key = (file_index, group)
        if key not in self._cache:
            # One column: no work for a pool of threads to share.
            column = pq.ParquetFile(self._files[file_index]).read_row_group(group, columns=["embedding"], use_threads=False).column("embedding")
            if isinstance(column, pa.ChunkedArray):
                column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
            dim = column.type.list_size
            self._cache[key] = column.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
            while len(self._cache) > 1 and sum(v.nbytes for v in self._cache.values()) > self._CACHE_BYTES:
                self._cache.popitem(last=False)
            # What the read and the groups dropped freed goes back to the OS: Arrow's pool would keep it,
            # and with edits spread over every row group of every file a run reads them all (at 1/10 of
            # English Wikipedia a day-2 shard's peak grew by 310 MB, 100 MB with this).
            release_free_memory()
        self._cache.move_to_end(key)
        return self._cache[key]

    def lookup(self, texts: list[str], keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(vectors [n, dim] float32, found mask [n] bool) of `texts` (`keys`: their content keys, where
        the caller has them)."""
        with self._lock:
            return self._lookup(texts, keys)

    def _lookup(self, texts: list[str], keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if self._keys is None:
            self._build()
        assert self._keys is not None and self._at is not None
        query = keys if keys is not None else chunk_keys.keys(texts)
        if len(self._keys):
            pos = np.minimum(np.searchsorted(self._keys, query), len(self._keys) - 1)
            found = self._keys[pos] == query
        else:
            pos, found = np.zeros(len(texts), dtype=np.int64), np.zeros(len(texts), dtype=bool)
        hits = np.flatnonzero(found)
        if not len(hits):
            return np.zeros((len(texts), 0), dtype=np.float32), found
        at = self._at[pos[hits]].astype(np.int64)
        in_files = np.searchsorted(self._file_starts, at, side="right") - 1
        where = np.stack([in_files, at - self._file_starts[in_files]], axis=1)  # (file index, row) per hit
        out: np.ndarray | None = None
        # File by file, row group by row group, in the order they are stored.
        for file_index in np.unique(where[:, 0]).tolist():
            in_file = np.flatnonzero(where[:, 0] == file_index)
            rows = where[in_file, 1]
            direct = self._direct(file_index)
            if direct is not None:  # the vectors asked for, read by row
                if out is None:
                    out = np.zeros((len(texts), direct.dim), dtype=np.float32)
                out[hits[in_file]] = direct.read(rows)
                continue
            starts = self._row_groups(file_index)
            groups = np.searchsorted(starts, rows, side="right") - 1
            for group in np.unique(groups).tolist():
                at = groups == group
                vectors = self._group(file_index, group)
                if out is None:
                    out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
                out[hits[in_file[at]]] = vectors[rows[at] - starts[group]]
        assert out is not None
        return out, found


# This process's indexes, by (store root, generation): loading one reads its keys (16 bytes a chunk).
_SHARED: dict[tuple[str, str], ReuseIndex] = {}
_SHARED_LOCK = threading.Lock()


def shared(root: str, gen: str, sync: StoreSync = LOCAL) -> ReuseIndex | None:
    """This process's index of generation `gen` of the store at `root` (made once), or None where the
    generation is gone (promoted away meanwhile: there is nothing to take from)."""
    store = Store(root, gen, sync)
    with _SHARED_LOCK:
        found = _SHARED.get((str(root), gen))
        if found is None:
            if not store.exists():
                return None
            found = _SHARED[(str(root), gen)] = ReuseIndex(store)
        return found


def release(root: str, gen: str) -> None:
    """Drop this process's index of a generation, so a long-lived worker does not keep it."""
    with _SHARED_LOCK:
        _SHARED.pop((str(root), gen), None)
