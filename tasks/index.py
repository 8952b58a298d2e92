"""The index step: after a complete run, build the approximate index of the forms asked for
(`--index`; wikiembed/index_build.py), so search and eval of the new generation use it from the start.

Touches: the generation's data files (read) and its `index/` folder (written: new segments), reading
the segments in the `index/` folders of the generations whose files it keeps.
"""

from __future__ import annotations

from prefect import task

from wikiembed.index_build import build_index
from wikiembed.results import IndexBuilt


@task(name="index")
def index_task(store: str, gen: str, forms: list[str]) -> list[IndexBuilt]:
    """Build each form's index over `gen` (only its data files no segment covers: the files kept from an
    earlier generation keep their segments); return what was built: form, rows, bytes, seconds, and how
    many data files were indexed and how many kept in segments reused."""
    return [IndexBuilt(b.form, b.rows, b.bytes, b.seconds, b.parts_built, b.parts_reused)
            for b in (build_index(store, f, gen) for f in forms)]
