"""One published generation held open for serving, and the store that says which one is published.

A search service outlives generations: a run (an incremental run's promote) or `improve --serve-link`
publishes a new one while the service answers, and the old generation's folder is removed right after
the swap. `ServedGeneration` therefore opens every data file and the index once (an open, memory-mapped
file stays readable after it is removed), keeps the row groups it read in a bounded cache, and has its
model loaded before it serves; a batch of queries is answered by one such object from start to end, so
no answer mixes two generations. The search itself is `wikiembed.search`'s: the query prompt, the index
or the exact scan, the hits.

`PublishedStore` resolves what is published before each batch (the store path's target when the path is
a symbolic link, then that store's `current` link: a few system calls) and loads a new generation when
it changed. A generation that cannot be loaded (its model's files missing, say) leaves the served one in
place; `/healthz` reports why, and the load is tried again after RETRY_S.

Touches: the store (read only): its links, manifest, markers, data files and index; the model's files.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wikiembed.backends.factory import release
from wikiembed.compact import Form
from wikiembed.index import VectorIndex
from wikiembed.search import StoreVectors, ranked_hits
from wikiembed.store import Store

logger = logging.getLogger(__name__)

# Decoded row groups (the hits' text, title, url, ...) kept per generation. A data file's row group
# holds 16,384 chunks (wikiembed.embedding.EMBED_GROUP), about 10 MB of text to decompress: reading it
# for every hit would cost tens of milliseconds a query, so the groups hits come from stay decoded, up to
# this many bytes (for a store whose text fits, all of it).
ROW_CACHE_BYTES = 512 * 1024 * 1024
# A generation that failed to load is tried again after this many seconds (not on every request).
RETRY_S = 10.0


class ServedGeneration(StoreVectors):
    """A generation of a store, its files and index held open and its model loaded, to answer queries."""

    def __init__(self, store: Path, gen: str | None, form: str = "float32", cache_bytes: int = ROW_CACHE_BYTES) -> None:
        super().__init__(store, gen)
        self.generation: str = self.store.gen
        self.revision: str = self.manifest.model.revision
        self.chosen: Form = self.form(form)
        self._files = [pq.ParquetFile(path, memory_map=True) for path in self.files]
        self._indexes: dict[str, tuple[tuple[VectorIndex | None, str | None], float]] = {}
        self._groups: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()
        self._cached = 0
        self._cache_bytes = cache_bytes
        self._articles: dict[str, int] | None = None
        # The data files are read by one thread at a time: the batcher's, and a feedback check building
        # the article table once.
        self._reading = threading.Lock()
        self._backend: Any = None
        self.index(self.chosen)  # opened (memory-mapped) now, while the generation's folder is certainly there
        self.embed_queries(["warm-up"])  # the model is loaded once, before the first request waits for it
        # (the thread that answers batches warms its own OpenMP threads up with its first batch: `Service`)

    @property
    def key(self) -> tuple[Path, str]:
        return self.root, self.generation

    def describe(self) -> dict[str, Any]:
        """What a response says it came from."""
        return {"store": self.root.name, "generation": self.generation, "model": self.model_id, "revision": self.revision,
                "form": self.chosen.name, "chunks": self.chunks}

    # StoreVectors' ways to the model and the files, held open and cached ----------------------------
    def query_backend(self, device: str | None = None) -> Any:
        # The model's files are checked against the store's revision once, when the generation is loaded.
        if self._backend is None:
            self._backend = super().query_backend(device)
        return self._backend

    def parquet(self, fi: int) -> pq.ParquetFile:
        return self._files[fi]

    def index(self, form: Form) -> tuple[VectorIndex | None, str | None]:
        # An index found is kept open; without one, the folder is looked at again after RETRY_S (a run
        # builds the index of a generation it has just published: the scan answers until it is there).
        found, checked = self._indexes.get(form.name, ((None, None), -RETRY_S))
        if found[0] is None and time.monotonic() - checked >= RETRY_S:
            found = super().index(form)
            self._indexes[form.name] = (found, time.monotonic())
        return found

    def row_groups(self, fi: int, groups: Sequence[int], columns: Sequence[str]) -> pa.Table:
        tables = []
        for g in groups:
            key = (fi, g)
            table = self._groups.get(key)
            if table is None or table.column_names != list(columns):
                table = self._files[fi].read_row_group(g, columns=list(columns))
                self._groups[key] = table
                self._cached += table.nbytes
                while self._cached > self._cache_bytes and len(self._groups) > 1:
                    _, dropped = self._groups.popitem(last=False)
                    self._cached -= dropped.nbytes
            self._groups.move_to_end(key)
            tables.append(table)
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    # answering --------------------------------------------------------------------------------------
    def answer(self, queries: Sequence[str], ks: Sequence[int]) -> list[dict[str, Any]]:
        """Each query's top k (its own k) as `wikiembed search` finds them, with one forward pass for all:
        a dict per query with `hits`, `method` (index or exact) and `index_note`."""
        with self._reading:
            vectors = self.embed_queries(list(queries))
            out: list[dict[str, Any]] = [{} for _ in queries]
            by_k: dict[int, list[int]] = {}
            for i, k in enumerate(ks):
                by_k.setdefault(int(k), []).append(i)
            # One ranking per distinct k: the index's answer for k is what `wikiembed search -k K` gets.
            for k, which in by_k.items():
                ranking = self.top(vectors[np.asarray(which)], k, self.chosen)
                for i, hits in zip(which, ranked_hits(ranking, self.rows(ranking.positions))):
                    out[i] = {"hits": [hit.to_json() for hit in hits], "method": ranking.method, "index_note": ranking.note}
            return out

    def chunks_of(self, article: str) -> int:
        """How many chunks the generation holds of an article (0: not one of its articles).

        The table (article id -> chunks, about 100 bytes an article) is read once, at the first feedback."""
        if self._articles is None:
            with self._reading:
                if self._articles is None:
                    counts: dict[str, int] = {}
                    for batch in self.live_batches(["id", "chunk_index"]):
                        for i, c in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                            if c >= counts.get(i, 0):
                                counts[i] = int(c) + 1
                    self._articles = counts
        return self._articles.get(article, 0)


class PublishedStore:
    """The store a service was started on, and the generation it publishes now (see the module's docstring)."""

    def __init__(self, store: str | Path, form: str = "float32", cache_bytes: int = ROW_CACHE_BYTES) -> None:
        self.path = Path(store).expanduser().absolute()  # not resolved: a link here may be repointed later
        self.form = form
        self.cache_bytes = cache_bytes
        self.error: str | None = None  # why the published generation is not the one served, if it is not
        self._served: ServedGeneration | None = None
        self._loading = threading.Lock()
        self._failed: dict[tuple[Path, str], float] = {}

    @property
    def served(self) -> ServedGeneration | None:
        """The generation answering now (None before the first load); `get` is what moves it on."""
        return self._served

    def published(self) -> tuple[Path, str | None]:
        """(store root, generation) published now: the path's target if it is a link, then its `current`."""
        root = Path(os.path.realpath(self.path))
        return root, Store(root).pointer("current")

    def get(self) -> ServedGeneration:
        """The generation to answer the next batch from: the published one, loaded once."""
        root, gen = self.published()
        served = self._served
        if served is not None and served.key == (root, gen):
            return served
        with self._loading:
            served = self._served
            if served is not None and served.key == (root, gen):
                return served
            if served is None:  # the first load: its errors are the service's start-up errors
                self._served = ServedGeneration(root, gen, self.form, self.cache_bytes)
                return self._served
            if gen is None:
                self.error = f"store {root} publishes no generation (no `current` link); still serving {served.generation}"
                return served
            failed = self._failed.get((root, gen))
            if failed is not None and time.monotonic() - failed < RETRY_S:
                return served
            try:
                loaded = ServedGeneration(root, gen, self.form, self.cache_bytes)
            except Exception as exc:  # noqa: BLE001 - whatever stops a load, the served generation stays
                self._failed[(root, gen)] = time.monotonic()
                self.error = (f"generation {gen} of store {root} is published but could not be loaded ({type(exc).__name__}: "
                              f"{exc}); still serving {served.generation} of {served.root}, trying again every {RETRY_S:.0f} s")
                logger.warning("wikiembed serve: %s", self.error)
                return served
            logger.info("wikiembed serve: now serving generation %s of %s (%s)", loaded.generation, root, loaded.model_id)
            if served._backend is not None and served._backend is not loaded._backend:
                # Another model: the old one is freed once a batch still answering from it is done.
                release(served._backend)
            self._served, self.error = loaded, None
            self._failed.clear()
            return loaded
