"""The export step: write the dataset card, publish a completed generation, upload if asked."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from wikiembed.executors.base import Executor
from wikiembed.results import Exported
from wikiembed.tasks.retry import retry_transient


@task(name="export", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def export_task(executor: Executor, store: str, gen: str, upload_to: str | None) -> Exported:
    """Card, then promotion of `gen` to the published generation, then the upload (`hub:` / `dir:`),
    where the store is."""
    return executor.export(store, gen, upload_to)
