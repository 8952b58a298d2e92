"""The download step: fingerprint the source; snapshot it and write the shard plan if it is new."""

from __future__ import annotations

from typing import Any

from prefect import task

from wikiembed.plan import prepare
from wikiembed.settings import RunSettings
from wikiembed.tasks.retry import retry_transient


@task(name="download", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient)
def download_task(settings: RunSettings) -> dict[str, Any]:
    """Return the store, the generation to fill, and the published generation it may reuse vectors from."""
    prepared = prepare(settings)
    return {"store": str(prepared.store.root), "gen": prepared.store.gen, "previous_gen": prepared.previous_gen}
