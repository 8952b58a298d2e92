"""The download step: fingerprint the source; snapshot it and write the shard plan if it is new."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from wikiembed.executors.base import Executor, Planned
from wikiembed.tasks.retry import retry_transient


@task(name="download", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def download_task(executor: Executor) -> Planned:
    """Return the store, the generation to fill, and the published generation it may reuse vectors from
    (where the store is: a Volume store's source goes from the Hub into the Volume, in the cloud)."""
    return executor.prepare()
