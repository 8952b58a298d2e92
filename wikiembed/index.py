"""Approximate nearest-neighbour index of one stored vector form, for stores too big to scan.

One HNSW graph (usearch, the optional extra `pip install 'wikiembed[index]'`) per data file of a
generation ("part"), built by streaming that file batch by batch: memory holds one file's graph and
one batch. A data file's index lives in the generation folder that wrote the file, beside its
`data/`, and is not published with it:

    gens/<G>/index/<column>/NNNNN.usearch   the graph of gens/<G>/data/NNNNN.parquet's rows, and the
                                            vectors it links (keys: row numbers in that file)
    gens/<G>/index/<column>/NNNNN.json      its sidecar: form, column, metric, scalar, dim, rows, the
                                            data file (`data`: its path in the store, `sha256`: as its
                                            `_done` marker records it), library version, build
                                            parameters, bytes, seconds, when it was built

A data file is written once and kept by every later generation that does not change it (an
incremental run's `base`, see docs/STORE.md), and so is its index: building the index of a
generation (`wikiembed index`, `index_build.build_index`) builds only the files that have none yet (a new
generation's own shards) and reuses the others, so the cost of indexing grows with the rows written,
not with the rows held, and one graph never grows past a shard's rows.

The sidecar is written after the index, like a marker after its data: an index without one is
never used. A sidecar whose data file or sha256 differs from what the generation holds now (a shard
rerun or changed on disk) is stale: search ignores it, says so and names the rebuild command, and
`wikiembed index` builds that file's index again. Before a stale index is replaced its sidecar is
removed, so a half-replaced pair is never read as valid.

Search asks every data file's graph for candidates, keeps the best of them all by the graph's
metric as it goes (what one graph over every row would propose), and maps their keys to the exact
scan's positions (file index in the generation's file list << 32 | row), so hits are read back the
same way. A kept file's rows of articles the generation dropped stay in its graph (it is shared with
the generation that wrote it) and are left out of its answer: a file with d dropped rows is asked
for extra candidates, and where they still hold too few live ones for a query, that file is
searched exactly (usearch's brute-force pass over the same file's vectors) for its best k + d, which
hold at least k live rows. A generation some of whose data files have no valid index is scanned
exactly, with a note naming the files without one and the rebuild command (the ranking's `method`
is `index` only when every file's index answered). An index of the older layout (one graph for a
whole generation, `gens/<G>/index/<column>.usearch`) is not read: search notes that it needs a
rebuild, and the rebuild removes it.

Per form, the graph links the stored values themselves (the index is no bigger than the column):

| form | index scalars | metric | query |
| --- | --- | --- | --- |
| float32, float16 | f32, f16 | inner product (vectors are unit length: cosine) | the truncated query |
| int8 | i8 (the stored codes) | inner product | the query times each dimension's step, rounded to int8 (the store's score is that plus a per-query constant) |
| binary | b1 (the packed bits) | Hamming | the query's sign bits |

The index proposes candidates; search rescores them exactly from the values the index holds (the
stored column's own values), so an index hit's score is the scan's score for that row, and binary
candidates get the same float rescoring as in the scan.

Touches: the `index/` folders of the generations whose data files a generation holds (written by
`build_part`, read by `open_index`).
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from wikiembed.atomic import atomic_path, remove, write_json
from wikiembed.compact import Form, Scorer
from wikiembed.errors import InputError, StoreError
from wikiembed.store import Part

INSTALL = "pip install 'wikiembed[index]'"
INDEX_DIR = "index"
# usearch's HNSW defaults (16 links per node, 128 candidates while adding): on the man-page store
# measured in the README they keep recall@10 against the exact scan at 0.97-0.99.
CONNECTIVITY = 16
EXPANSION_ADD = 128
# Candidates kept while searching: at least this many, and never fewer than asked for.
EXPANSION_SEARCH = 64
# A file with dropped rows is first asked for count + min(dropped, max(count, DROPPED_EXTRA)) candidates.
DROPPED_EXTRA = 32
_SCALARS = {"float32": "f32", "float16": "f16", "int8": "i8", "binary": "b1"}


def require_library() -> Any:
    """usearch's Index class, or an InputError naming the pip command."""
    try:
        from usearch.index import Index
    except ImportError:
        raise InputError(f"the approximate index needs the usearch library, which is not installed; {INSTALL}") from None
    return Index


def library_version() -> str | None:
    try:
        import usearch
    except ImportError:
        return None
    return f"usearch {usearch.__version__}"


def folder(generation_dir: Path, form: Form) -> Path:
    """The folder of `form`'s data-file indexes in a generation folder."""
    return generation_dir / INDEX_DIR / form.column


def paths(data_file: Path, form: Form) -> tuple[Path, Path]:
    """(index file, sidecar) of `form` for one data file (`gens/<G>/data/NNNNN.parquet`)."""
    where = folder(data_file.parent.parent, form)
    return where / f"{data_file.stem}.usearch", where / f"{data_file.stem}.json"


def legacy_paths(generation_dir: Path, form: Form) -> tuple[Path, Path]:
    """(index file, sidecar) of the older layout: one graph of `form` over a whole generation."""
    return generation_dir / INDEX_DIR / f"{form.column}.usearch", generation_dir / INDEX_DIR / f"{form.column}.json"


def metric(form: Form) -> str:
    """The index's metric for a form: Hamming for binary, inner product for the others."""
    return "hamming" if form.precision == "binary" else "ip"


def scalar(form: Form) -> str:
    """The index's scalar type for a form: the stored values' own."""
    return _SCALARS[form.precision]


def relative(path: Path, store: Path) -> str:
    """A data file's path as a sidecar names it: relative to the store's folder."""
    try:
        return path.relative_to(store).as_posix()
    except ValueError:
        return path.as_posix()


# -- one data file's index ------------------------------------------------------------------------

def check_part(part: Part, form: Form, store: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(sidecar, None) when `part`'s index of `form` is built and matches the file the generation holds
    (data file, sha256, rows, form, and the index file's size); else (None, why not), the why None when
    no index of that file was ever built. Reads the sidecar and stats the index file only."""
    index_path, sidecar_path = paths(part.path, form)
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        if not isinstance(sidecar, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"unreadable sidecar {sidecar_path} ({exc})"
    data = relative(part.path, store)
    if (sidecar.get("data"), sidecar.get("sha256")) != (data, part.sha256):
        return None, "stale"
    expected = {"column": form.column, "dim": form.dim, "scalar": scalar(form), "metric": metric(form),
                "rows": part.chunks}
    wrong = [key for key, value in expected.items() if sidecar.get(key) != value]
    try:
        size = index_path.stat().st_size
    except OSError:
        size = None
    if size != sidecar.get("bytes"):
        wrong.append("index file missing" if size is None else "index file size")
    if wrong:
        return None, f"index {index_path} does not match its sidecar ({', '.join(wrong)})"
    return sidecar, None


def build_part(part: Part, form: Form, batches: Iterable[np.ndarray], store: Path) -> dict[str, Any]:
    """Build `form`'s index of one data file from `batches` (its stored values [n, width], every row
    in file order) and write it, then its sidecar; returns the sidecar."""
    Index = require_library()
    started = time.monotonic()
    index = Index(ndim=form.dim, metric=metric(form), dtype=scalar(form),
                  connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
    rows = 0
    for values in batches:
        if len(values):
            index.add(np.arange(rows, rows + len(values), dtype=np.uint64), values)
        rows += len(values)
    if rows != part.chunks:
        raise StoreError(f"{part.path}: the data file held {rows} rows while indexing, not {part.chunks} as its marker "
                         "records; a run is rewriting it, build the index when it is finished.")
    index_path, sidecar_path = paths(part.path, form)
    remove(sidecar_path)  # a stale sidecar goes first: it never vouches for the new index file
    with atomic_path(index_path) as tmp:
        index.save(str(tmp))
    del index
    sidecar = {
        "form": form.name,
        "column": form.column,
        "metric": metric(form),
        "scalar": scalar(form),
        "dim": form.dim,
        "rows": rows,
        "data": relative(part.path, store),
        "sha256": part.sha256,
        "library": library_version(),
        "connectivity": CONNECTIVITY,
        "expansion_add": EXPANSION_ADD,
        "bytes": index_path.stat().st_size,
        "seconds": round(time.monotonic() - started, 3),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(sidecar_path, sidecar)
    return sidecar


def remove_legacy(generation_dir: Path, form: Form) -> list[Path]:
    """Delete the older layout's index of `form` in a generation folder (sidecar first); the paths removed."""
    gone = []
    for path in reversed(legacy_paths(generation_dir, form)):
        if path.is_file():
            remove(path)
            gone.append(path)
    return gone


# -- searching ------------------------------------------------------------------------------------

@dataclass
class PartIndex:
    """One data file's graph, opened for searching: `fi` is the file's index in the generation's list."""

    fi: int
    index: Any
    sidecar: dict[str, Any]
    dropped: Callable[[], np.ndarray] | None = None  # the file's rows the generation dropped (sorted), when it has any
    _dropped: np.ndarray | None = field(default=None, repr=False)

    def dropped_rows(self) -> np.ndarray:
        if self.dropped is None:
            return np.zeros(0, dtype=np.int64)
        if self._dropped is None:
            self._dropped = np.asarray(self.dropped(), dtype=np.int64)
        return self._dropped

    def search(self, query: np.ndarray, depth: int, *, exact: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keys, distances, valid), each [nq, depth]: the best `depth` rows per query by the graph's
        metric (`exact`: by a brute-force pass over the file's vectors instead of the graph)."""
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

    def candidates(self, query: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions as fi << 32 | row, distances), each [nq, count]: about the `count` best live rows
        per query by the graph's metric; -1 and inf past them."""
        rows = int(self.sidecar["rows"])
        dropped = self.dropped_rows()
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
                # Dropped rows crowd these queries' answers: the file's exact best count + dropped hold `count` live rows.
                deep = min(rows, count + len(dropped))
                more, more_dist, more_live = self.search(query[short], deep, exact=True)
                more_live &= ~np.isin(more, dropped)
                pad = ((0, 0), (0, deep - depth))
                keys, dist, live = np.pad(keys, pad), np.pad(dist, pad, constant_values=np.inf), np.pad(live, pad)
                keys[short], dist[short], live[short] = more, more_dist, more_live
        order = np.argsort(~live, axis=1, kind="stable")[:, :count]  # live rows first, in the graph's order
        keys, dist, live = (np.take_along_axis(a, order, axis=1) for a in (keys, dist, live))
        positions[:, : keys.shape[1]] = np.where(live, (np.int64(self.fi) << 32) | keys, -1)
        distances[:, : keys.shape[1]] = np.where(live, dist, np.inf)
        return positions, distances

    def values(self, rows: np.ndarray) -> np.ndarray:
        return np.stack(self.index.get(np.asarray(rows, dtype=np.uint64), dtype=self.sidecar["scalar"]))


class VectorIndex:
    """The indexes of one form over every data file of a generation, opened for searching
    (memory-mapped, not read into RAM)."""

    def __init__(self, parts: Sequence[PartIndex], form: Form) -> None:
        self.parts = list(parts)
        self.form = form
        self._by_fi = {p.fi: p for p in self.parts}

    def candidates(self, scorer: Scorer, count: int) -> np.ndarray:
        """Positions of about the `count` best live rows per query by the index's metric, [nq, count];
        -1 where the generation has fewer. Each data file's graph proposes its best `count`, and the
        best `count` of them all by the metric's distance are kept as the files are searched (what
        one graph over every row would propose; memory: [nq, 2 × count])."""
        query = _query_values(scorer)
        best = np.full((len(query), 0), -1, dtype=np.int64)
        best_distance = np.full((len(query), 0), np.inf, dtype=np.float32)
        for part in self.parts:
            positions, distances = part.candidates(query, count)
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
        files = positions >> 32
        out: np.ndarray | None = None
        for fi in np.unique(files):
            at = np.flatnonzero(files == fi)
            got = self._by_fi[int(fi)].values(positions[at] & 0xFFFFFFFF)
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
    """(the index of `form` over every one of `parts`, None) when each data file has a valid index;
    otherwise (None, why it was not used), the why None when no index of this form was ever built for
    any of them. `dropped_rows(fi)`: the rows of file `fi` the generation dropped (asked only when a
    search needs them); `gen`: the generation's id, to name its own shards by number in a note."""
    found: list[tuple[int, Part, dict[str, Any]]] = []
    stale, missing, broken = [], [], []
    for fi, part in enumerate(parts):
        sidecar, why = check_part(part, form, store)
        if sidecar is not None:
            found.append((fi, part, sidecar))
        elif why is None:
            missing.append(part)
        elif why == "stale":
            stale.append(part)
        else:
            broken.append(why)
    if not found and not stale and not broken:
        legacy = [p for p in legacy_paths(generation_dir, form) if p.is_file()]
        if legacy:
            return None, (f"the index of {form.name} at {legacy[0]} has an older layout (one graph for the whole generation) "
                          f"that is no longer read; {_rebuild(store, form)}")
        return None, None
    if stale or broken or missing:
        what = []
        if stale:
            what.append(f"{_names(stale, gen)} rewritten")
        if missing:
            what.append(f"{_names(missing, gen)} not indexed")
        what += broken
        lead = (f"the index of {form.name} was built from other data than the store holds now" if stale
                else f"the index of {form.name} covers {len(found)} of {len(parts)} data files")
        return None, f"{lead} ({'; '.join(what)}); {_rebuild(store, form)}"
    try:
        Index = require_library()
    except InputError:
        return None, f"the store has an index of {form.name}, but the usearch library is not installed here; {INSTALL} to use it"
    opened = []
    for fi, part, sidecar in found:
        index_path, _ = paths(part.path, form)
        try:
            index = Index.restore(str(index_path), view=True)
        except Exception as exc:  # noqa: BLE001 - usearch raises plain RuntimeError/ValueError for bad files
            index, reason = None, f"{type(exc).__name__}: {exc}"
        else:
            reason = "unreadable file"
        if index is None or len(index) != sidecar.get("rows"):
            return None, (f"the index file {index_path} does not match its sidecar ({reason if index is None else 'row count differs'}); "
                          f"{_rebuild(store, form)}")
        has_dropped = part.drop is not None and len(part.drop) > 0
        opened.append(PartIndex(fi, index, sidecar, (lambda fi=fi: dropped_rows(fi)) if has_dropped else None))
    return VectorIndex(opened, form), None


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

