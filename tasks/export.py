"""The export step: write the dataset card, publish a completed generation, upload if asked."""

from __future__ import annotations

from typing import Any

from prefect import task

from wikiembed.plan import promote
from wikiembed.publish import publish, write_card
from wikiembed.store import Store
from wikiembed.tasks.retry import retry_transient


@task(name="export", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)
def export_task(store: str, gen: str, upload_to: str | None) -> dict[str, Any]:
    """Card, then promotion of `gen` to the published generation, then the upload (`hub:` / `dir:`)."""
    s = Store(store, gen)
    write_card(s.dir)
    promoted = promote(s)
    published = publish(Store(store).root, upload_to) if upload_to else None
    return {"promoted": promoted, "published": published}
