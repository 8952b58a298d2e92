"""The download step: fingerprint the source; snapshot it and write the shard plan if it is new."""

from __future__ import annotations

from typing import Any

from prefect import task

from wikiembed.fanout import prepare_store
from wikiembed.settings import RunSettings
from wikiembed.tasks.retry import retry_transient
from wikiembed.volume_store import VolumeStore, open_store


@task(name="download", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient)
def download_task(settings: RunSettings) -> dict[str, Any]:
    """Return the store, the generation to fill, and the published generation it may reuse vectors from."""
    store = open_store(settings.store)
    if isinstance(store, VolumeStore):  # the source goes from the Hub into the Volume, in the cloud
        return store.prepare(settings.model_dump())
    return prepare_store(settings.model_dump())
