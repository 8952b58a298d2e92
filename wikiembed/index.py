"""Approximate nearest-neighbour index of one stored vector form, for stores too big to scan: searching it.

A generation's index of a form is a small set of segments, HNSW graphs (usearch) over one or more of
its data files each; their layout on disk, which ones serve a generation (`find_segments`), and
their build are `wikiembed.index_segments`'s (`wikiembed index` itself: `wikiembed.index_build`).

Which segments a generation uses is decided the same way by search and build (`find_segments`): of
the valid ones, biggest first, each whose files none already chosen covers. Search asks each chosen
segment for candidates, keeps the best of them all by the graph's metric as it goes (what one graph
over every row would propose), and maps their keys to the exact scan's positions (file index in the
generation's file list << 32 | row), so hits are read back the same way. A kept file's rows of
articles the generation dropped stay in its segment (shared with the generation that wrote it) and
are left out of its answer: a segment with d dropped rows is asked for extra candidates, and where
they still hold too few live ones for a query, that segment is searched exactly (usearch's
brute-force pass over its vectors) for its best k + d, which hold at least k live rows. A generation
some of whose data files no valid segment covers is scanned exactly, with a note naming those files
and the rebuild command (the ranking's `method` is `index` only when the index answered). An index
of the oldest layout (one graph for a whole generation, `gens/<G>/index/<column>.usearch`) is not
read: search notes that it needs a rebuild, and the rebuild removes it.

Per form, the graph links the stored values themselves (the index is no bigger than the column):

| form | index scalars | metric | query |
| --- | --- | --- | --- |
| float32, float16 | f32, f16 | inner product (vectors are unit length: cosine) | the truncated query |
| int8 | i8 (the stored codes) | inner product | the query times each dimension's step, rounded to int8 (the store's score is that plus a per-query constant) |
| binary | b1 (the packed bits) | Hamming | the query's sign bits |

The index proposes candidates; search rescores them exactly from the values the index holds (the
stored column's own values), so an index hit's score is the scan's score for that row, and binary
candidates get the same float rescoring as in the scan.

Touches: the `index/` folders of the generations whose data files a generation holds (read by
`open_index`, through `wikiembed.index_segments.find_segments`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from wikiembed.compact import Form, Scorer
from wikiembed.errors import InputError
from wikiembed.index_segments import (EXPANSION_SEARCH, INSTALL, ROW_BITS, ROW_MASK, find_segments, legacy_paths,
                                      require_library)
from wikiembed.store_parts import Part

# A segment with dropped rows is first asked for count + min(dropped, max(count, DROPPED_EXTRA)) candidates.
DROPPED_EXTRA = 32


@dataclass
class SegmentIndex:
    """One segment's graph, opened for searching: `files[n]` is the generation's file index of the
    segment's file number n (a key's high bits)."""

    files: Sequence[int]
    index: Any
    sidecar: dict[str, Any]
    dropped: Callable[[], np.ndarray] | None = None  # the keys of rows the generation dropped (sorted), when it has any
    _dropped: np.ndarray | None = field(default=None, repr=False)
    _files: np.ndarray | None = field(default=None, repr=False)

    def dropped_keys(self) -> np.ndarray:
        if self.dropped is None:
            return np.zeros(0, dtype=np.int64)
        if self._dropped is None:
            self._dropped = np.asarray(self.dropped(), dtype=np.int64)
        return self._dropped

    def search(self, query: np.ndarray, depth: int, *, exact: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keys, distances, valid), each [nq, depth]: the best `depth` rows per query by the graph's
        metric (`exact`: by a brute-force pass over the segment's vectors instead of the graph)."""
        self.index.expansion_search = max(EXPANSION_SEARCH, depth)
        # One query: on this thread (a pool's start costs more than a small graph's search); a batch: every core.
        found = self.index.search(query, depth, exact=exact, threads=1 if len(query) == 1 else 0)
        keys = np.zeros((len(query), depth), dtype=np.int64)
        distances = np.full((len(query), depth), np.inf, dtype=np.float32)
        valid = np.zeros((len(query), depth), dtype=bool)
        if len(query) == 1:  # one query: usearch answers with its matches only, no padding
            n = len(found.keys)
            keys[0, :n], distances[0, :n], valid[0, :n] = found.keys, found.distances, True
            return keys, distances, valid
        valid[:] = np.arange(depth)[None, :] < np.asarray(found.counts)[:, None]
        keys[valid] = np.asarray(found.keys, dtype=np.int64)[valid]
        distances[valid] = np.asarray(found.distances, dtype=np.float32)[valid]
        return keys, distances, valid

    def positions(self, keys: np.ndarray) -> np.ndarray:
        """Keys of this segment as the generation's positions (file index << 32 | row)."""
        if self._files is None:
            self._files = np.asarray(self.files, dtype=np.int64)
        return (self._files[keys >> ROW_BITS] << ROW_BITS) | (keys & ROW_MASK)

    def candidates(self, query: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions as fi << 32 | row, distances), each [nq, count]: about the `count` best live rows
        per query by the graph's metric; -1 and inf past them."""
        rows = int(self.sidecar["rows"])
        dropped = self.dropped_keys()
        positions = np.full((len(query), count), -1, dtype=np.int64)
        distances = np.full((len(query), count), np.inf, dtype=np.float32)
        want = min(count, rows - len(dropped))
        if want <= 0:
            return positions, distances
        depth = min(rows, count + min(len(dropped), max(count, DROPPED_EXTRA)))
        keys, dist, live = self.search(query, depth)
        if len(dropped):
            live &= ~np.isin(keys, dropped)
            short = np.flatnonzero(live.sum(axis=1) < want)
            if len(short):
                # Dropped rows crowd these queries' answers: the segment's exact best count + dropped hold `count` live rows.
                deep = min(rows, count + len(dropped))
                more, more_dist, more_live = self.search(query[short], deep, exact=True)
                more_live &= ~np.isin(more, dropped)
                pad = ((0, 0), (0, deep - depth))
                keys, dist, live = np.pad(keys, pad), np.pad(dist, pad, constant_values=np.inf), np.pad(live, pad)
                keys[short], dist[short], live[short] = more, more_dist, more_live
        order = np.argsort(~live, axis=1, kind="stable")[:, :count]  # live rows first, in the graph's order
        keys, dist, live = (np.take_along_axis(a, order, axis=1) for a in (keys, dist, live))
        positions[:, : keys.shape[1]] = np.where(live, self.positions(np.where(live, keys, 0)), -1)
        distances[:, : keys.shape[1]] = np.where(live, dist, np.inf)
        return positions, distances

    def values(self, keys: np.ndarray) -> np.ndarray:
        return np.stack(self.index.get(np.asarray(keys, dtype=np.uint64), dtype=self.sidecar["scalar"]))


class VectorIndex:
    """The segments of one form that cover every data file of a generation, opened for searching
    (memory-mapped, not read into RAM)."""

    def __init__(self, segments: Sequence[SegmentIndex], form: Form) -> None:
        self.segments = list(segments)
        self.form = form
        # Data file index -> (its segment, its number there).
        self._where = {fi: (segment, number) for segment in self.segments for number, fi in enumerate(segment.files)}

    def candidates(self, scorer: Scorer, count: int) -> np.ndarray:
        """Positions of about the `count` best live rows per query by the index's metric, [nq, count];
        -1 where the generation has fewer. Each segment proposes its best `count`, and the best `count`
        of them all by the metric's distance are kept as the segments are searched (what one graph over
        every row would propose; memory: [nq, 2 × count])."""
        query = _query_values(scorer)
        best = np.full((len(query), 0), -1, dtype=np.int64)
        best_distance = np.full((len(query), 0), np.inf, dtype=np.float32)
        for segment in self.segments:
            positions, distances = segment.candidates(query, count)
            best, best_distance = np.concatenate([best, positions], axis=1), np.concatenate([best_distance, distances], axis=1)
            if best.shape[1] > count:
                keep = np.argpartition(best_distance, count - 1, axis=1)[:, :count]
                best, best_distance = np.take_along_axis(best, keep, axis=1), np.take_along_axis(best_distance, keep, axis=1)
        return best

    def values(self, positions: np.ndarray) -> np.ndarray:
        """The stored values of `form` at `positions` ([n, form.width]), as the index holds them:
        the column's own values, so rescoring needs no read of the data files."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) == 0:
            return np.zeros((0, self.form.width), dtype=np.float32)
        files = positions >> ROW_BITS
        out: np.ndarray | None = None
        for fi in np.unique(files):
            at = np.flatnonzero(files == fi)
            segment, number = self._where[int(fi)]
            got = segment.values((np.int64(number) << ROW_BITS) | (positions[at] & ROW_MASK))
            if out is None:
                out = np.empty((len(positions), got.shape[1]), dtype=got.dtype)
            out[at] = got
        assert out is not None
        return out


def _query_values(scorer: Scorer) -> np.ndarray:
    form = scorer.form
    if form.precision == "binary":
        return np.packbits(scorer.q > 0, axis=1)
    weights = scorer.weights
    if form.precision == "int8":
        # Ranking by w · code is unchanged by scaling w: use the whole int8 range per query.
        scale = 127.0 / np.maximum(np.abs(weights).max(axis=1, keepdims=True), 1e-12)
        return np.rint(weights * scale).astype(np.int8)
    return weights


def open_index(
    parts: Sequence[Part],
    form: Form,
    store: Path,
    generation_dir: Path,
    dropped_rows: Callable[[int], np.ndarray],
    gen: str | None = None,
) -> tuple[VectorIndex | None, str | None]:
    """(the index of `form` over every one of `parts`, None) when segments cover each data file;
    otherwise (None, why it was not used), the why None when no index of this form was ever built for
    any of them. `dropped_rows(fi)`: the rows of file `fi` the generation dropped (asked only when a
    search needs them); `gen`: the generation's id, to name its own shards by number in a note."""
    found = find_segments(parts, form, store, generation_dir)
    if not found.chosen and not found.stale and not found.grouped and not found.broken:
        legacy = [p for p in legacy_paths(generation_dir, form) if p.is_file()]
        if legacy:
            return None, (f"the index of {form.name} at {legacy[0]} has an older layout (one graph for the whole generation) "
                          f"that is no longer read; {_rebuild(store, form)}")
        return None, None
    if found.uncovered:
        stale = [parts[fi] for fi in found.stale]
        grouped = [parts[fi] for fi in found.grouped]
        missing = [parts[fi] for fi in found.uncovered if fi not in set(found.stale) | set(found.grouped)]
        what = []
        if stale:
            what.append(f"{_names(stale, gen)} rewritten")
        if grouped:
            what.append(f"{_names(grouped, gen)} indexed only together with {'them' if stale else 'files the generation no longer holds'}")
        if missing:
            what.append(f"{_names(missing, gen)} not indexed")
        what += found.broken
        lead = (f"the index of {form.name} was built from other data than the store holds now" if stale
                else f"the index of {form.name} covers {found.covered} of {len(parts)} data files")
        return None, f"{lead} ({'; '.join(what)}); {_rebuild(store, form)}"
    try:
        Index = require_library()
    except InputError:
        return None, f"the store has an index of {form.name}, but the usearch library is not installed here; {INSTALL} to use it"
    opened = []
    for segment, fis in found.chosen:
        try:
            index = Index.restore(str(segment.index_path), view=True)
        except Exception as exc:  # noqa: BLE001 - usearch raises plain RuntimeError/ValueError for bad files
            index, reason = None, f"{type(exc).__name__}: {exc}"
        else:
            reason = "unreadable file"
        if index is None or len(index) != segment.rows:
            return None, (f"the index file {segment.index_path} does not match its sidecar ({reason if index is None else 'row count differs'}); "
                          f"{_rebuild(store, form)}")
        with_dropped = [(number, fi) for number, fi in enumerate(fis) if parts[fi].drop is not None and len(parts[fi].drop) > 0]
        opened.append(SegmentIndex(fis, index, segment.sidecar, _dropped_keys(with_dropped, dropped_rows) if with_dropped else None))
    return VectorIndex(opened, form), None


def _dropped_keys(files: list[tuple[int, int]], dropped_rows: Callable[[int], np.ndarray]) -> Callable[[], np.ndarray]:
    """The sorted keys of a segment's dropped rows, from (number in the segment, generation file index) of its files that have some."""
    def keys() -> np.ndarray:
        return np.concatenate([(np.int64(number) << ROW_BITS) | np.asarray(dropped_rows(fi), dtype=np.int64) for number, fi in files])
    return keys


def _rebuild(store: Path, form: Form) -> str:
    return f"scanned instead; rebuild it with `wikiembed index --store {shlex.quote(str(store))} --form {shlex.quote(form.name)}`"


def _names(parts: Sequence[Part], gen: str | None) -> str:
    """Data files as a note names them: `shards 1,2` (the generation's own), `GEN/NNNNN` (kept ones)."""
    own = [p.shard for p in parts if p.gen == gen]
    kept = [f"{p.gen}/{p.shard:05d}" for p in parts if p.gen != gen]
    out = []
    if own:
        out.append(f"shards {_ids(own)}")
    if kept:
        out.append(f"kept files {_ids(kept)}")
    return " and ".join(out)


def _ids(items: Sequence[Any]) -> str:
    shown = ",".join(str(s) for s in items[:10])
    return shown + (f" and {len(items) - 10} more" if len(items) > 10 else "")
