"""The index step: after a complete run, build the approximate index of the forms asked for
(`--index`; wikiembed/index.py), so search and eval of the new generation use it from the start.

Touches: the generation's data files (read) and its `index/` folder (written).
"""

from __future__ import annotations

from typing import Any

from prefect import task

from wikiembed.search import build_index


@task(name="index")
def index_task(store: str, gen: str, forms: list[str]) -> list[dict[str, Any]]:
    """Build each form's index over `gen`; return what was built (form, rows, bytes, seconds)."""
    return [{key: built[key] for key in ("form", "rows", "bytes", "seconds")} for built in (build_index(store, f, gen) for f in forms)]
