"""Approximate nearest-neighbour index of one stored vector form, for stores too big to scan.

An HNSW graph (usearch, the optional extra `pip install 'wikiembed[index]'`) over one vector
column of a generation, built by streaming the shard files batch by batch: memory holds the index
and one batch. It lives in the generation's folder, beside `data/`, and is not published with it:

    gens/<id>/index/<column>.usearch   the graph and the vectors it links
    gens/<id>/index/<column>.json      what it was built from: form, metric, rows, and each data
                                       file's shard and sha256 (as its `_done` marker records them)

The sidecar is written after the index, like a marker after its data: an index without one is
never used. An index whose sidecar names other data than the generation's done shards (a shard
rerun, added or changed on disk) is stale: search ignores it, says so, and scans instead.

Keys are the exact scan's positions (file index << 32 | row), so hits are read back the same way.
Per form, the graph links the stored values themselves (the index is no bigger than the column):

| form | index scalars | metric | query |
| --- | --- | --- | --- |
| float32, float16 | f32, f16 | inner product (vectors are unit length: cosine) | the truncated query |
| int8 | i8 (the stored codes) | inner product | the query times each dimension's step, rounded to int8 (the store's score is that plus a per-query constant) |
| binary | b1 (the packed bits) | Hamming | the query's sign bits |

The index proposes candidates; search rescores them exactly from the values the index holds (the
stored column's own values), so an index hit's score is the scan's score for that row, and binary
candidates get the same float rescoring as in the scan.

Touches: the generation's `index/` folder (written by `build`, read by `open_index`).
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from wikiembed.atomic import atomic_path, write_json
from wikiembed.compact import Form, Scorer
from wikiembed.errors import InputError, StoreError

INSTALL = "pip install 'wikiembed[index]'"
INDEX_DIR = "index"
# usearch's HNSW defaults (16 links per node, 128 candidates while adding): on the man-page store
# measured in the README they keep recall@10 against the exact scan at 0.97-0.99.
CONNECTIVITY = 16
EXPANSION_ADD = 128
# Candidates kept while searching: at least this many, and never fewer than asked for.
EXPANSION_SEARCH = 64
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


def paths(generation_dir: Path, form: Form) -> tuple[Path, Path]:
    """(index file, sidecar) of `form` in a generation folder."""
    folder = generation_dir / INDEX_DIR
    return folder / f"{form.column}.usearch", folder / f"{form.column}.json"


def _metric(form: Form) -> str:
    return "hamming" if form.precision == "binary" else "ip"


def build(
    generation_dir: Path,
    form: Form,
    sources: Sequence[dict[str, Any]],
    batches: Iterable[tuple[Any, ...]],
    rows: int,
) -> dict[str, Any]:
    """Build `form`'s index from `batches` ((file index, stored values [n, width]) in file order)
    and write it with its sidecar; returns the sidecar.

    `sources`: one entry per data file, in the order the file indexes refer to: {"shard", "sha256"}
    as the done markers record them; `rows`: how many rows the files hold together. A batch may carry
    a third item, a mask of the rows to index (the others belong to articles the generation dropped).
    """
    Index = require_library()
    started = time.monotonic()
    index = Index(ndim=form.dim, metric=_metric(form), dtype=_SCALARS[form.precision],
                  connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
    next_row = [0] * len(sources)
    indexed = 0
    for fi, values, *live in batches:
        start = next_row[fi]
        keys = (np.uint64(fi) << np.uint64(32)) | np.arange(start, start + len(values), dtype=np.uint64)
        if live and live[0] is not None:  # rows of articles the generation no longer holds
            keys, values = keys[live[0]], values[live[0]]
        if len(keys):
            index.add(keys, values)
        indexed += len(keys)
        next_row[fi] = start + len(live[0]) if live and live[0] is not None else start + len(values)
    if sum(next_row) != rows:
        raise StoreError(f"{generation_dir}: the data files held {sum(next_row)} rows while indexing, not {rows}; "
                         "a run is writing this generation, build the index when it is finished.")
    index_path, sidecar_path = paths(generation_dir, form)
    with atomic_path(index_path) as tmp:
        index.save(str(tmp))
    sidecar = {
        "form": form.name,
        "column": form.column,
        "metric": _metric(form),
        "scalar": _SCALARS[form.precision],
        "dim": form.dim,
        "rows": indexed,
        "library": library_version(),
        "connectivity": CONNECTIVITY,
        "expansion_add": EXPANSION_ADD,
        "files": [{"shard": s["shard"], "sha256": s["sha256"]} for s in sources],
        "bytes": index_path.stat().st_size,
        "seconds": round(time.monotonic() - started, 3),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(sidecar_path, sidecar)
    return sidecar


class VectorIndex:
    """A built index opened for searching (memory-mapped, not read into RAM)."""

    def __init__(self, index: Any, form: Form, sidecar: dict[str, Any]) -> None:
        self._index = index
        self.form = form
        self.sidecar = sidecar

    def candidates(self, scorer: Scorer, count: int) -> np.ndarray:
        """Positions of about the `count` best rows per query by the index's metric, [nq, count];
        -1 where the index has fewer rows."""
        self._index.expansion_search = max(EXPANSION_SEARCH, count)
        found = self._index.search(_query_values(scorer), count)
        out = np.full((len(scorer.q), count), -1, dtype=np.int64)
        if len(scorer.q) == 1:  # one query: usearch answers with its matches only, no padding
            out[0, : len(found.keys)] = found.keys
            return out
        keys = np.asarray(found.keys, dtype=np.int64)
        valid = np.arange(count)[None, :] < np.asarray(found.counts)[:, None]
        out[valid] = keys[valid]
        return out

    def values(self, positions: np.ndarray) -> np.ndarray:
        """The stored values of `form` at `positions` ([n, form.width]), as the index holds them:
        the column's own values, so rescoring needs no read of the data files."""
        if len(positions) == 0:
            return np.zeros((0, self.form.width), dtype=np.float32)
        return np.stack(self._index.get(np.asarray(positions, dtype=np.uint64), dtype=self.sidecar["scalar"]))


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


def open_index(generation_dir: Path, form: Form, sources: Sequence[dict[str, Any]], store: Path) -> tuple[VectorIndex | None, str | None]:
    """(the index of `form`, None) when one is built and matches `sources`; otherwise (None, why
    it was not used), where the why is None when no index was ever built for this form."""
    index_path, sidecar_path = paths(generation_dir, form)
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"the index of {form.name} has an unreadable sidecar {sidecar_path} ({exc}); {_rebuild(store, form)}"
    built_from = [(f.get("shard"), f.get("sha256")) for f in sidecar.get("files", [])]
    now = [(s["shard"], s["sha256"]) for s in sources]
    if built_from != now:
        return None, f"the index of {form.name} was built from other data than the store holds now ({_difference(built_from, now)}); {_rebuild(store, form)}"
    try:
        Index = require_library()
    except InputError:
        return None, f"the store has an index of {form.name}, but the usearch library is not installed here; {INSTALL} to use it"
    try:
        index = Index.restore(str(index_path), view=True)
    except Exception as exc:  # noqa: BLE001 - usearch raises plain RuntimeError/ValueError for bad files
        index = None
        reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = "unreadable file"
    if index is None or len(index) != sidecar.get("rows"):
        return None, f"the index file {index_path} does not match its sidecar ({reason if index is None else 'row count differs'}); {_rebuild(store, form)}"
    return VectorIndex(index, form, sidecar), None


def _rebuild(store: Path, form: Form) -> str:
    return f"scanned instead; rebuild it with `wikiembed index --store {shlex.quote(str(store))} --form {shlex.quote(form.name)}`"


def _difference(built_from: list[tuple[Any, Any]], now: list[tuple[Any, Any]]) -> str:
    old, new = dict(built_from), dict(now)
    changed = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
    parts = []
    if changed:
        parts.append(f"shards {_ids(changed)} rewritten")
    if new.keys() - old.keys():
        parts.append(f"shards {_ids(sorted(new.keys() - old.keys()))} added")
    if old.keys() - new.keys():
        parts.append(f"shards {_ids(sorted(old.keys() - new.keys()))} no longer done")
    return ", ".join(parts) or "files in another order"


def _ids(shards: Sequence[Any]) -> str:
    shown = ",".join(str(s) for s in shards[:10])
    return shown + (f" and {len(shards) - 10} more" if len(shards) > 10 else "")

