"""`wikiembed index`: build the approximate index of one stored form of a generation, a graph per data file.

The graphs themselves (their files, sidecars, checks and search) are `wikiembed.index`'s; this module reads a
generation's data files as search reads them (`wikiembed.search.StoreVectors`) and has `wikiembed.index` build
each missing graph. It sits above both, so neither imports the other's caller.

Touches: the generation's data files (read), its `index/` folders (written), older-layout graphs (removed).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from wikiembed.compact import column_values
from wikiembed.errors import StoreError
from wikiembed.index import (CONNECTIVITY, EXPANSION_ADD, build_part, check_part, folder, library_version, metric, paths,
                             remove_legacy, require_library, scalar)
from wikiembed.search import SCAN_ROWS, StoreVectors


def build_index(store: str | Path, form: str = "float32", gen: str | None = None) -> dict[str, Any]:
    """Build the approximate index of one stored form of a generation (default: the published one): for
    each of its data files without a valid index, one graph streamed from that file (memory: one file's
    graph); files that have one (kept from an earlier generation, or built before) are reused. Returns
    the `wikiembed index --json` payload: form, rows (the generation's), bytes (of every file's index),
    seconds (this build's), and per data file whether its index was built or reused."""
    require_library()
    vectors = StoreVectors(store, gen)
    chosen = vectors.form(form)
    started = time.monotonic()
    files = []
    for part in vectors.parts:
        sidecar, _ = check_part(part, chosen, vectors.root)
        built = sidecar is None
        if built:
            parquet = pq.ParquetFile(part.path, memory_map=True)
            if chosen.column not in parquet.schema_arrow.names:
                raise StoreError(f"{part.path} has no column {chosen.column!r}; rerun that shard so every shard has the store's forms.")
            batches = (column_values(b.column(0), chosen) for b in parquet.iter_batches(batch_size=SCAN_ROWS, columns=[chosen.column]))
            sidecar = build_part(part, chosen, batches, vectors.root)
        files.append({"data": sidecar["data"], "index": str(paths(part.path, chosen)[0]), "rows": sidecar["rows"],
                      "bytes": sidecar["bytes"], "seconds": sidecar["seconds"], "built": built})
    # The older layout's graphs (one per generation) of this form are no longer read: removed.
    folders = dict.fromkeys([vectors.store.dir, *(p.path.parent.parent for p in vectors.parts)])
    removed = [str(path) for g in folders for path in remove_legacy(g, chosen)]
    built_files = [f for f in files if f["built"]]
    return {
        "store": str(vectors.root),
        "generation": vectors.store.gen,
        "form": chosen.name,
        "column": chosen.column,
        "metric": metric(chosen),
        "scalar": scalar(chosen),
        "dim": chosen.dim,
        "library": library_version(),
        "connectivity": CONNECTIVITY,
        "expansion_add": EXPANSION_ADD,
        "path": str(folder(vectors.store.dir, chosen)),
        "rows": vectors.chunks,
        "indexed_rows": sum(f["rows"] for f in files),
        "bytes": sum(f["bytes"] for f in files),
        "seconds": round(time.monotonic() - started, 3),
        "parts": len(files),
        "parts_built": len(built_files),
        "parts_reused": len(files) - len(built_files),
        "rows_built": sum(f["rows"] for f in built_files),
        "files": files,
        "removed_older_layout": removed,
    }
