"""The calibrate step: fix a generation's int8 ranges before any shard is embedded.

See `wikiembed.calibration` for why and how. The executor runs it where it embeds the
shards, with the same backend (for a store on a Modal Volume: in a shard container at the
Volume, so the snapshot never leaves the cloud).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from wikiembed.compact import Int8Calibration
from wikiembed.executors.base import Executor
from wikiembed.tasks.retry import retry_transient


@task(name="calibrate", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def calibrate_task(executor: Executor, store: str, gen: str) -> Int8Calibration | None:
    """Record the generation's int8 ranges in its manifest if it stores int8 and has none yet."""
    return executor.calibrate(store, gen)
