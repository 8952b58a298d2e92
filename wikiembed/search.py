"""Exact nearest-neighbour search over a run store's data files.

The store's published generation is scanned shard file by shard file and row batch by row batch,
reading only the one vector column being searched (memory-mapped parquet), so memory stays at one
batch of vectors plus the running best candidates per query, whatever the store's size. Many
queries are scored together with one matrix product per batch (eval sends hundreds). The hits'
other columns (title, url, text, ...) are read afterwards, only from the row groups that hold them.

Queries are embedded with the store's own model (the manifest's model id and revision), on the
local engine.

Where every data file of the generation is covered by an approximate index of the searched form
(`wikiembed index`: a few segments, each a graph over one or more data files, see `wikiembed.index`)
that matches it, search asks each segment for candidates instead of scanning and rescores them from
the stored column; where one file's index is missing or stale the whole generation is scanned (the
result says why and names the rebuild command), and `exact=True` always scans. Results say which
was used (`method`: `index` or `exact`).

Touches: the store's `manifest.json`, `_done/` and `data/` (read only), the `index/` folders of the
generations whose data files it holds (read; written by `wikiembed.index_build.build_index`); the model's files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq
import shlex

from wikiembed import index as ann
from wikiembed.compact import Form, Int8Calibration, Scorer, column_values, form_by_name, spec_from_manifest
from wikiembed.errors import InputError, StoreError
from wikiembed.results import JsonRecord
from wikiembed.store import Store

# Vectors scored per step: [queries × SCAN_ROWS] float32 scores stay small (500 queries: 16 MB).
SCAN_ROWS = 8192
# Binary search ranks by Hamming distance first, then rescores this many times k candidates with
# the float query (sentence-transformers' default multiplier for binary rescoring is 4).
DEFAULT_RESCORE = 4
HIT_COLUMNS = ("id", "url", "title", "chunk_index", "char_start", "char_end", "text")


@dataclass(frozen=True)
class Hit(JsonRecord):
    """One chunk found for a query, with its score (higher is nearer)."""

    score: float
    id: str
    title: str
    url: str
    chunk_index: int
    char_start: int
    char_end: int
    text: str


@dataclass(frozen=True)
class SearchResult(JsonRecord):
    """One query's top k in a store (`search`): `wikiembed search --json` writes its `to_json()`."""

    store: str
    model: str
    query: str
    k: int
    form: str
    rescore: int | None  # a binary form's rescoring multiplier
    method: str  # index | exact
    index_note: str | None  # why the form's index was not used
    chunks_searched: int
    hits: tuple[Hit, ...]


@dataclass(frozen=True)
class Ranking:
    """The top k per query: scores and positions [nq, k] (file index << 32 | row), best first;
    `method` is `index` or `exact`; `note` says why an index present was not used."""

    scores: np.ndarray
    positions: np.ndarray
    method: str
    note: str | None = None


class StoreVectors:
    """One generation of a store (the published one unless named), as something to search.

    `trust_remote_code`: the store's model may run code shipped in its folder (`auto_map`) to embed
    queries, as the run that embedded it was allowed to (`--trust-remote-code`)."""

    def __init__(self, store: str | Path, gen: str | None = None, *, trust_remote_code: bool = False) -> None:
        self.trust_remote_code = trust_remote_code
        root = Store(store)
        current = gen or root.pointer("current")
        if current is None and root.root.is_file():
            raise StoreError(root.why_no_generation())
        if current is None:
            raise StoreError(
                f"store {root.root}: nothing is published there yet (no `current` generation); "
                f"finish a run with `wikiembed run --store {shlex.quote(str(root.root))}` first."
            )
        self.store = Store(root.root, current)
        self.manifest = self.store.read_manifest()
        # Its done shards, and the files it keeps from earlier generations less their dropped articles.
        self.parts = self.store.parts(self.manifest)
        self.files = [p.path for p in self.parts]
        self._dropped_rows: dict[int, np.ndarray] = {}
        self._opened: dict[str, ann.VectorIndex] = {}
        if not self.files:
            raise StoreError(f"store {root.root}: no shard is done yet; finish the run first (`wikiembed status --store {shlex.quote(str(root.root))}`).")
        self.model_id: str = self.manifest.model.model_id
        self.dim = int(self.manifest.model.dim)
        self.compact = spec_from_manifest(self.manifest)
        self.int8_calibration = Int8Calibration.of(self.manifest)

    @property
    def root(self) -> Path:
        return self.store.root

    @property
    def chunks(self) -> int:
        """Rows the generation holds (a kept file's dropped articles left out)."""
        return sum(p.live_chunks for p in self.parts)

    def live_batches(self, columns: Sequence[str], batch_size: int = 65_536) -> Iterator[Any]:
        """Every row the generation holds, as record batches of `columns`, file by file (the rows of
        articles a kept file no longer holds left out)."""
        for part in self.parts:
            extra = ["id"] if part.drop is not None and "id" not in columns else []
            for batch in pq.ParquetFile(part.path, memory_map=True).iter_batches(columns=[*columns, *extra], batch_size=batch_size):
                live = part.live(batch.column("id")) if part.drop is not None else None
                if live is not None:
                    batch = batch.filter(live)
                yield batch.select(list(columns)) if extra else batch

    def form(self, name: str = "float32") -> Form:
        return form_by_name(name, self.compact, self.dim)

    # How the files are reached: opened per call here; a reader that outlives a publish holds them
    # open and caches what it reads instead (`wikiembed.serving.generation.ServedGeneration`).
    def parquet(self, fi: int) -> pq.ParquetFile:
        """Data file `fi`, opened for reading."""
        return pq.ParquetFile(self.files[fi], memory_map=True)

    def row_groups(self, fi: int, groups: Sequence[int], columns: Sequence[str]) -> Any:
        """Row groups `groups` (ascending) of data file `fi`, as one arrow table of `columns`."""
        return self.parquet(fi).read_row_groups(list(groups), columns=list(columns))

    def index(self, form: Form) -> tuple[ann.VectorIndex | None, str | None]:
        """The form's index when segments that match them cover every data file, else (None, why not): see
        `wikiembed.index.open_index`. An index found stays open for this object's later searches (the
        data files it was checked against are this object's); without one, the folders are looked at
        again on the next call."""
        if form.name in self._opened:
            return self._opened[form.name], None
        found, note = ann.open_index(self.parts, form, self.root, self.store.dir, self.dropped_rows, self.store.gen)
        if found is not None:
            self._opened[form.name] = found
        return found, note

    def dropped_rows(self, fi: int) -> np.ndarray:
        """The row numbers of data file `fi` that the generation does not hold (a kept file's rows of
        articles it dropped), sorted; read from the file's `id` column once."""
        if fi not in self._dropped_rows:
            part = self.parts[fi]
            rows, row0 = [], 0
            if part.drop is not None:
                for batch in self.parquet(fi).iter_batches(batch_size=65_536, columns=["id"]):
                    live = part.live(batch.column(0))
                    if live is not None:
                        rows.append(row0 + np.flatnonzero(~live.to_numpy(zero_copy_only=False)))
                    row0 += batch.num_rows
            self._dropped_rows[fi] = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, dtype=np.int64)
        return self._dropped_rows[fi]

    @property
    def query_prompt(self) -> str:
        """The prompt queries get (the model's query prompt, or --query-prompt-name's, as recorded at planning)."""
        return self.manifest.model.query_prompt

    def model_files(self, why: str) -> Any:
        """The store's model (`wikiembed.model.ModelInfo`), refused when the files found here are not the
        ones the store was embedded with; `why` says what needs those very files."""
        from wikiembed.model import model_info

        info = model_info(self.model_id)
        recorded = self.manifest.model.revision
        if recorded and info.revision != recorded:
            raise InputError(
                f"model {self.model_id!r}: the files found here (revision {info.revision}) are not the ones store "
                f"{self.root} was embedded with (revision {recorded}); {why}."
            )
        return info

    def query_backend(self, device: str | None = None) -> Any:
        """The local engine of the store's model, refused when the model's files are not the store's."""
        from wikiembed.backends.factory import open_backend

        self.model_files("queries must use the same model")
        return open_backend("local", self.model_id, device=device, trust_remote_code=self.trust_remote_code)

    def embed_queries(self, texts: Sequence[str], device: str | None = None) -> np.ndarray:
        """Queries embedded as `encode_query` embeds them: same model, with its query prompt, float32."""
        return np.asarray(self.query_backend(device).embed(list(texts), self.query_prompt), dtype=np.float32)

    def scan(self, queries: np.ndarray, k: int, form: Form, rescore: int = DEFAULT_RESCORE) -> tuple[np.ndarray, np.ndarray]:
        """Top k per query: (scores [nq, k], positions [nq, k] as file index << 32 | row), best first."""
        if k < 1:
            raise InputError(f"-k {k}: ask for at least 1 hit.")
        scorer = Scorer(queries, form, self.int8_calibration)
        two_stage = form.precision == "binary" and rescore > 1
        depth = k * rescore if two_stage else k
        nq = len(queries)
        best = np.full((nq, 0), -np.inf, dtype=np.float32)
        best_pos = np.zeros((nq, 0), dtype=np.int64)
        best_second = np.zeros((nq, 0), dtype=np.float32)
        for fi, path in enumerate(self.files):
            parquet = self.parquet(fi)
            if form.column not in parquet.schema_arrow.names:
                raise StoreError(f"{path} has no column {form.column!r}; rerun that shard so every shard has the store's forms.")
            row0 = 0
            part = self.parts[fi]
            for batch in parquet.iter_batches(batch_size=SCAN_ROWS, columns=[form.column, *(["id"] if part.drop is not None else [])]):
                stored = column_values(batch.column(0), form)
                n = len(stored)
                scores = scorer.score(stored)
                live = part.live(batch.column(1)) if part.drop is not None else None
                if live is not None:  # rows of articles this generation no longer holds never rank
                    scores[:, ~live.to_numpy(zero_copy_only=False)] = -np.inf
                pos = (np.int64(fi) << 32) | np.arange(row0, row0 + n, dtype=np.int64)
                merged = np.concatenate([best, scores.astype(np.float32)], axis=1)
                merged_pos = np.concatenate([best_pos, np.broadcast_to(pos, (nq, n))], axis=1)
                keep = min(depth, merged.shape[1])
                top = np.argpartition(-merged, keep - 1, axis=1)[:, :keep] if merged.shape[1] > keep else np.argsort(-merged, axis=1)
                if two_stage:
                    second = np.concatenate([best_second, scorer.rescore(stored).astype(np.float32)], axis=1)
                    best_second = np.take_along_axis(second, top, axis=1)
                best = np.take_along_axis(merged, top, axis=1)
                best_pos = np.take_along_axis(merged_pos, top, axis=1)
                row0 += n
        final = best_second if two_stage else best
        order = np.argsort(-final, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(final, order, axis=1), np.take_along_axis(best_pos, order, axis=1)

    def top(self, queries: np.ndarray, k: int, form: Form, rescore: int = DEFAULT_RESCORE, *, exact: bool = False) -> Ranking:
        """Top k per query through the form's index when segments that match them cover every data file
        (each segment's graph proposes candidates, all are rescored exactly), else by `scan`."""
        if k < 1:
            raise InputError(f"-k {k}: ask for at least 1 hit.")
        if exact:
            return Ranking(*self.scan(queries, k, form, rescore), method="exact")
        index, note = self.index(form)
        if index is None:
            return Ranking(*self.scan(queries, k, form, rescore), method="exact", note=note)
        scorer = Scorer(queries, form, self.int8_calibration)
        two_stage = form.precision == "binary" and rescore > 1
        candidates = index.candidates(scorer, k * rescore if two_stage else k)
        found = np.unique(candidates[candidates >= 0])
        stored = index.values(found)
        scores = scorer.rescore(stored) if two_stage else scorer.score(stored)
        column = np.searchsorted(found, np.maximum(candidates, 0))
        picked = np.where(candidates >= 0, np.take_along_axis(scores, column, axis=1), -np.inf).astype(np.float32)
        order = np.argsort(-picked, axis=1, kind="stable")[:, :k]
        return Ranking(np.take_along_axis(picked, order, axis=1), np.take_along_axis(candidates, order, axis=1), method="index")

    def rows(self, positions: np.ndarray, columns: Sequence[str] = HIT_COLUMNS) -> dict[int, dict[str, Any]]:
        """The given columns of the rows at `positions` (file index << 32 | row; -1: none), read by row group."""
        wanted = sorted({int(p) for p in np.asarray(positions).reshape(-1) if p >= 0})
        out: dict[int, dict[str, Any]] = {}
        by_file: dict[int, list[int]] = {}
        for p in wanted:
            by_file.setdefault(p >> 32, []).append(p & 0xFFFFFFFF)
        for fi, rows in by_file.items():
            parquet = self.parquet(fi)
            sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
            starts = np.cumsum([0, *sizes])
            group_of = {r: int(np.searchsorted(starts, r, side="right") - 1) for r in rows}
            groups = sorted(set(group_of.values()))
            table = self.row_groups(fi, groups, columns)
            # Where each group read begins in `table`.
            first, base = {}, 0
            for g in groups:
                first[g] = base
                base += sizes[g]
            local = [first[group_of[r]] + r - int(starts[group_of[r]]) for r in rows]
            picked = table.take(local).to_pylist()
            for r, row in zip(rows, picked):
                out[(fi << 32) | r] = row
        return out


def ranked_hits(ranking: Ranking, rows: dict[int, dict[str, Any]]) -> list[list[Hit]]:
    """Each query's hits, best first, from its ranking and the rows `StoreVectors.rows` read."""
    return [
        [Hit(float(s), **{c: rows[int(p)][c] for c in HIT_COLUMNS}) for s, p in zip(scores, positions) if np.isfinite(s)]
        for scores, positions in zip(ranking.scores, ranking.positions)
    ]


def search(
    store: str | Path,
    query: str,
    k: int = 10,
    *,
    form: str = "float32",
    rescore: int = DEFAULT_RESCORE,
    device: str | None = None,
    exact: bool = False,
    trust_remote_code: bool = False,
) -> SearchResult:
    """The top k chunks of a store for one query (`wikiembed search --json` writes its `to_json()`).

    `exact`: scan even where an index of the form is built. `trust_remote_code`: see `StoreVectors`."""
    if not query.strip():
        raise InputError("search query is empty; give the text to search for, e.g. wikiembed search --store S \"who wrote Hamlet\".")
    vectors = StoreVectors(store, trust_remote_code=trust_remote_code)
    chosen = vectors.form(form)
    q = vectors.embed_queries([query], device=device)
    ranking = vectors.top(q, k, chosen, rescore, exact=exact)
    hits = ranked_hits(ranking, vectors.rows(ranking.positions))[0]
    return SearchResult(str(vectors.root), vectors.model_id, query, k, chosen.name, rescore if chosen.precision == "binary" else None,
                        ranking.method, ranking.note, vectors.chunks, tuple(hits))
