"""The index step: after a complete run, build the approximate index of the forms asked for
(`--index`; wikiembed/index.py), so search and eval of the new generation use it from the start.

Touches: the generation's data files (read) and the `index/` folders of the generations that wrote
them (written: a data file's index lives beside it).
"""

from __future__ import annotations

from prefect import task

from wikiembed.index_build import build_index
from wikiembed.results import IndexBuilt


@task(name="index")
def index_task(store: str, gen: str, forms: list[str]) -> list[IndexBuilt]:
    """Build each form's index over `gen` (only its data files that have none: a file kept from an earlier
    generation keeps its index); return what was built: form, rows, bytes, seconds, and how many data
    files' indexes were built and reused."""
    return [IndexBuilt(b["form"], b["rows"], b["bytes"], b["seconds"], b["parts_built"], b["parts_reused"])
            for b in (build_index(store, f, gen) for f in forms)]
