"""`wikiembed index`: build the approximate index of one stored form of a generation, as segments.

The segments themselves (their files, sidecars and plan) are `wikiembed.index_segments`'s, their search
`wikiembed.index`'s; this module reads a generation's data files as search reads them
(`wikiembed.search.StoreVectors`) and has `wikiembed.index_segments` plan the build and build each new
segment. It sits above both, so neither imports the other's caller.

Touches: the generation's data files (read), its `index/` folders (written), older-layout graphs (removed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq

from wikiembed.compact import Form, column_values
from wikiembed.errors import StoreError
from wikiembed.results import JsonRecord
from wikiembed.index_segments import (CONNECTIVITY, EXPANSION_ADD, build_segments, folder, library_version, metric,
                                      relative, remove_legacy, require_library, scalar, segment_rows)
from wikiembed.search import SCAN_ROWS, StoreVectors
from wikiembed.store_parts import Part


def _batches(form: Form):  # noqa: ANN202
    def batches(part: Part) -> Iterator[np.ndarray]:
        parquet = pq.ParquetFile(part.path, memory_map=True)
        if form.column not in parquet.schema_arrow.names:
            raise StoreError(f"{part.path} has no column {form.column!r}; rerun that shard so every shard has the store's forms.")
        for batch in parquet.iter_batches(batch_size=SCAN_ROWS, columns=[form.column]):
            yield column_values(batch.column(0), form)
    return batches


@dataclass(frozen=True)
class IndexedSegment(JsonRecord):
    """One segment a generation's index uses: its graph file, how many data files and rows it covers."""

    index: str
    files: int
    rows: int
    bytes: int
    seconds: float | None  # its build's, as its sidecar records it
    built: bool  # by this build (else reused)


@dataclass(frozen=True)
class IndexedFile(JsonRecord):
    """One data file of the generation and the segment that covers it."""

    data: str  # relative to the store
    index: str
    rows: int
    built: bool  # its rows were indexed by this build (else kept in a segment reused)


@dataclass(frozen=True)
class IndexBuild(JsonRecord):
    """What `build_index` did, the `wikiembed index --json` payload."""

    store: str
    generation: str | None
    form: str
    column: str
    metric: str
    scalar: str
    dim: int
    library: str | None
    connectivity: int
    expansion_add: int
    path: str
    rows: int  # the generation's
    indexed_rows: int
    bytes: int  # of every segment it uses
    seconds: float  # this build's
    parts: int
    parts_built: int
    parts_reused: int
    rows_built: int
    segment_rows: int
    segments_built: int
    segments_reused: int
    segments_merged: int
    rows_merged: int
    segments: tuple[IndexedSegment, ...]
    files: tuple[IndexedFile, ...]
    removed_unused: tuple[str, ...]
    removed_older_layout: tuple[str, ...]


def build_index(store: str | Path, form: str = "float32", gen: str | None = None) -> IndexBuild:
    """Build the approximate index of one stored form of a generation (default: the published one):
    the segments that cover its data files as they are (kept from an earlier generation, or built
    before) are reused, the files none covers are indexed into new segments, and small segments are
    merged (`wikiembed.index_segments.plan_segments`); each segment is written as it is finished (memory: one
    segment's graph). Returns what it did (`IndexBuild`, the `wikiembed index --json` payload): per data
    file whether its rows were indexed by this build (`parts_built`, `rows_built`) or kept in a segment reused."""
    require_library()
    vectors = StoreVectors(store, gen)
    chosen = vectors.form(form)
    started = time.monotonic()
    plan, segments, unused = build_segments(vectors.parts, chosen, vectors.root, vectors.store.dir, _batches(chosen))
    # The oldest layout's graphs (one per generation) of this form are no longer read: removed.
    gen_dirs = dict.fromkeys([vectors.store.dir, *(p.path.parent.parent for p in vectors.parts)])
    removed = [str(path) for g in gen_dirs for path in remove_legacy(g, chosen)]
    where = {fi: (segment, built) for segment, fis, built in segments for fi in fis}
    files = tuple(IndexedFile(data=relative(part.path, vectors.root), index=str(where[fi][0].index_path), rows=part.chunks,
                              built=where[fi][1]) for fi, part in enumerate(vectors.parts))
    built_files = [f for f in files if f.built]
    built_segments = [s for s, _, built in segments if built]
    return IndexBuild(
        store=str(vectors.root),
        generation=vectors.store.gen,
        form=chosen.name,
        column=chosen.column,
        metric=metric(chosen),
        scalar=scalar(chosen),
        dim=chosen.dim,
        library=library_version(),
        connectivity=CONNECTIVITY,
        expansion_add=EXPANSION_ADD,
        path=str(folder(vectors.store.dir, chosen)),
        rows=vectors.chunks,
        indexed_rows=sum(s.rows for s, _, _ in segments),
        bytes=sum(s.bytes for s, _, _ in segments),
        seconds=round(time.monotonic() - started, 3),
        parts=len(files),
        parts_built=len(built_files),
        parts_reused=len(files) - len(built_files),
        rows_built=sum(f.rows for f in built_files),
        segment_rows=segment_rows(chosen),
        segments_built=len(built_segments),
        segments_reused=len(segments) - len(built_segments),
        segments_merged=len(plan.merged),
        rows_merged=sum(s.rows for s in plan.merged),
        segments=tuple(IndexedSegment(index=str(s.index_path), files=len(fis), rows=s.rows, bytes=s.bytes,
                                      seconds=s.sidecar.get("seconds"), built=built) for s, fis, built in segments),
        files=files,
        removed_unused=tuple(str(p) for p in unused),
        removed_older_layout=tuple(removed),
    )
