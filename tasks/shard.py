"""The shard step: write one shard's `chunks/NNNNN.parquet` from the snapshot."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from prefect import task

from wikiembed.chunking import chunk_shard
from wikiembed.plan import check_snapshot
from wikiembed.store import Store
from wikiembed.tasks.retry import counted_attempts, retry_transient


@task(name="shard", retries=2, retry_delay_seconds=[2, 10], task_run_name="shard-{shard:05d}", retry_condition_fn=retry_transient)
def shard_task(store: str, gen: str, shard: int) -> dict[str, Any]:
    """Chunk one shard; return its chunk file's info (chunks, sha256)."""
    with counted_attempts():
        s = Store(store, gen)
        manifest = s.read_manifest()
        try:
            return chunk_shard(s, shard, manifest)
        except (OSError, pa.ArrowException):
            check_snapshot(s, manifest)  # a damaged snapshot: say so, and name the repair
            raise
