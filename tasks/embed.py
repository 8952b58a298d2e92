"""The embed step: one shard, chunk to marker, handed to the run's executor.

Vectors never travel between tasks: the executor chunks the shard, embeds it and writes
`data/NNNNN.parquet` and then its marker `_done/NNNNN.json`, wherever it runs the shard (this
process's engine, a worker process with a TEI client, a Modal container at the store's
Volume: `wikiembed.executors`). The task gets the marker back.

The `_done/` markers are the only record of what is finished: the flow never submits a
shard whose marker is valid, so a resumed run, or a flow run retried from the UI, skips
finished shards through them.

Retries live here, once, for every executor: a shard that failed with a transient error is
retried by Prefect (`EMBED_RETRIES`, exponential backoff with jitter, counted in the summary).
The Modal shard classes retry nothing themselves (`retries=0`).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from wikiembed.executors.base import Executor, ShardJob
from wikiembed.records import ShardResult
from wikiembed.tasks.retry import counted_attempts, retry_transient

EMBED_RETRIES = 3


# NO_CACHE: a shard's marker is its cache; hashing the executor for a cache key on every
# submission would only slow the fan-out.
@task(
    name="embed",
    task_run_name="embed-{job.shard:05d}",
    retries=EMBED_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
    cache_policy=NO_CACHE,
)
def embed_task(executor: Executor, job: ShardJob) -> ShardResult:
    """Run one whole shard through the executor; return its marker plus the attempts it took."""
    from prefect.runtime import task_run

    with counted_attempts():
        marker = executor.run_shard(job)
    return ShardResult.model_validate({**marker.model_dump(), "attempts": task_run.run_count or 1})
