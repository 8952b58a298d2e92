"""The export step: write the dataset card, publish a completed generation, upload if asked."""

from __future__ import annotations

from typing import Any

from prefect import task

from wikiembed.fanout import export_store
from wikiembed.tasks.retry import retry_transient
from wikiembed.volume_store import VolumeStore, open_store


@task(name="export", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)
def export_task(store: str, gen: str, upload_to: str | None) -> dict[str, Any]:
    """Card, then promotion of `gen` to the published generation, then the upload (`hub:` / `dir:`)."""
    s = open_store(store, gen)
    if isinstance(s, VolumeStore):  # in the cloud: from the Volume to the Hub
        return s.export(upload_to)
    return export_store(store, gen, upload_to)
