"""The reuse index: a published generation's vectors, found by the content of their chunk text.

A new source version re-embeds only chunks whose text changed: every other chunk's vector is
taken from the published generation through this index. One index per (store, generation) per
process (`shared`): the shard tasks of a run (threads), a shard worker process or a Modal container
running many shards all load it once and share it; `release` drops it when a run ends.

Touches: the indexed generation's data files and markers (read) and its `reuse-index.npz` (written
by `save`, read by every later index of that generation).
"""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile
from collections import OrderedDict

import numpy as np
import pyarrow.parquet as pq

from wikiembed.atomic import atomic_path
from wikiembed.embedding import read_vectors, text_key
from wikiembed.store import LOCAL, Store, StoreSync


class ReuseIndex:
    """Vectors of the published generation, found by chunk-text content key.

    Keys are 16-byte blake2b digests held in one sorted numpy array (about 24
    bytes per chunk: ~1 GB for all of English Wikipedia); vectors are read
    from the old data files on demand, a few files cached at a time. Building the
    keys reads every old chunk text; `save` keeps them next to that generation's
    data, and every later index of it (another worker process, a Modal container)
    loads them instead.
    """

    _CACHE_FILES = 4
    # The saved index, in the indexed generation's folder (`save`): keys, where, files and the
    # fingerprint of the data files it was built from (each done shard's sha256).
    SAVED = "reuse-index.npz"

    def __init__(self, store: Store) -> None:
        self.store = store
        self._fingerprint = ""
        self._saved = False
        self._keys: np.ndarray | None = None
        self._where: np.ndarray | None = None  # (file index, row) per key
        self._files: list[str] = []  # data files, relative to the store's root
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # shard tasks run as threads and share one index

    def _done(self) -> tuple[list[tuple[str, str]], str]:
        """(data file relative to the store's root, sha256) of every file the generation's rows are in
        (its done shards and the files it keeps from earlier generations), what the index covers, and
        their fingerprint."""
        root = self.store.root
        files = [(p.path.relative_to(root).as_posix(), p.sha256) for p in self.store.parts()]
        return files, hashlib.sha256(json.dumps(files).encode()).hexdigest()

    def _build(self) -> None:
        done, fingerprint = self._done()
        if self._load(fingerprint):
            return
        keys, where = [], []
        for name, _ in done:
            # Every row of a kept file, dropped articles' too: a vector depends only on its chunk's text.
            texts = pq.read_table(self.store.root / name, columns=["text"]).column("text").to_pylist()
            keys.append(np.array([text_key(t) for t in texts], dtype="S16"))
            where.append(np.stack([np.full(len(texts), len(self._files)), np.arange(len(texts))], axis=1))
            self._files.append(name)
        self._keys = np.concatenate(keys) if keys else np.zeros(0, dtype="S16")
        self._where = np.concatenate(where) if where else np.zeros((0, 2), dtype=np.int64)
        order = np.argsort(self._keys, kind="stable")
        self._keys, self._where = self._keys[order], self._where[order]
        self._fingerprint = fingerprint

    def _load(self, fingerprint: str, keys: bool = True) -> bool:
        """Take the saved index if it covers exactly the generation's current data files (with
        `keys` false, only say whether it does: the keys are the bulk of the file)."""
        path = self.store.dir / self.SAVED
        try:
            with np.load(path) as saved:
                if str(saved["fingerprint"]) != fingerprint:
                    return False  # a shard was re-embedded since: the saved keys are stale
                if not keys:
                    return True
                if saved["files"].dtype.kind not in "US":
                    return False  # an index saved before files were named by path: rebuilt
                self._keys, self._where, self._files = saved["keys"], saved["where"], [str(f) for f in saved["files"]]
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return False  # unreadable: rebuilt from the data files, and saved again by save()
        self._fingerprint, self._saved = fingerprint, True
        return True

    def save(self) -> None:
        """Build the index (if needed) and keep it in the generation's folder, so the processes and
        containers that reuse this generation load its keys instead of reading every old chunk text."""
        with self._lock:
            if self._keys is None:
                if self._load(self._done()[1], keys=False):
                    return  # saved already for exactly these data files (a resumed run): nothing to read
                self._build()
            if self._saved:
                return
            with atomic_path(self.store.dir / self.SAVED) as tmp:
                with tmp.open("wb") as fh:
                    np.savez(fh, keys=self._keys, where=self._where, files=np.asarray(self._files, dtype=str),
                             fingerprint=np.asarray(self._fingerprint))  # fmt: skip
            self._saved = True

    def _vectors(self, file_index: int) -> np.ndarray:
        if file_index not in self._cache:
            _, vectors = read_vectors(self.store.root / self._files[file_index])
            self._cache[file_index] = vectors
            while len(self._cache) > self._CACHE_FILES:
                self._cache.popitem(last=False)
        self._cache.move_to_end(file_index)
        return self._cache[file_index]

    def lookup(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self._lookup(texts)

    def _lookup(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self._keys is None:
            self._build()
        assert self._keys is not None and self._where is not None
        query = np.array([text_key(t) for t in texts], dtype="S16")
        pos = np.searchsorted(self._keys, query)
        pos = np.minimum(pos, max(len(self._keys) - 1, 0))
        found = (len(self._keys) > 0) & (self._keys[pos] == query) if len(self._keys) else np.zeros(len(texts), bool)
        dim = None
        out = None
        for i in np.flatnonzero(found):
            f, row = self._where[pos[i]]
            vecs = self._vectors(int(f))
            if out is None:
                dim = vecs.shape[1]
                out = np.zeros((len(texts), dim), dtype=np.float32)
            out[i] = vecs[row]
        if out is None:
            out = np.zeros((len(texts), 0), dtype=np.float32)
        return out, found


# This process's indexes, by (store root, generation): loading one reads its keys (~24 bytes a chunk).
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
