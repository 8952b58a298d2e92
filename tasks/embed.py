"""The embed step and its checkpoint: vectors never travel between tasks, so one task embeds a
shard and writes `data/NNNNN.parquet` + `_done/NNNNN.json`.

The `_done/` markers are the only record of what is finished: the flow never submits a
shard whose marker is valid, so a resumed run, or a flow run retried from the UI, skips
finished shards through them.

For a store on a Modal Volume (`--backend modal`) the task sends the shard's reference to a
GPU container that chunks, embeds and checkpoints it next to the data, and gets the marker back.
With `--backend tei` the task hands the same reference to a worker process on this machine
(`wikiembed.shard_workers`), which runs the same shard function with its own TEI client.

Retries live here, once, for every backend: a shard that failed with a transient error is
retried by Prefect (`EMBED_RETRIES`, exponential backoff with jitter, counted in the summary).
The Modal shard classes retry nothing themselves (`retries=0`).
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.tasks import exponential_backoff

from wikiembed.backends.factory import open_backend
from wikiembed.backends.modal_client import ModalShards
from wikiembed.checkpoint import embed_shard
from wikiembed import reuse_index
from wikiembed.progress import Progress
from wikiembed.shard_workers import run as run_in_worker
from wikiembed.store import Store
from wikiembed.tasks.retry import counted_attempts, retry_transient
from wikiembed.volume_store import mount_path

EMBED_RETRIES = 3
_RETRY_POLICY = {
    "retries": EMBED_RETRIES,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_transient,
}

@task(name="embed", task_run_name="embed-{shard:05d}", **_RETRY_POLICY)
def embed_task(
    store: str,
    gen: str,
    shard: int,
    chunk_info: dict[str, Any],
    backend_opts: dict[str, Any],
    reuse_gen: str | None = None,
) -> dict[str, Any]:
    """Embed one shard's chunks (reusing the published generation's vectors where the text is
    unchanged) and checkpoint them; return the marker plus the attempts it took."""
    from prefect.runtime import task_run

    with counted_attempts():
        s = Store(store, gen)
        manifest = s.read_manifest()
        backend = open_backend(model=manifest["model"]["model_id"], **backend_opts)
        reuse = reuse_index.shared(store, reuse_gen) if reuse_gen else None
        rows = manifest["plan"]["shards"][shard][1] - manifest["plan"]["shards"][shard][0]
        marker = embed_shard(s, shard, backend, rows, reuse=reuse, progress=Progress.current().add_chunks)
    return {**marker, "attempts": task_run.run_count or 1}


@task(name="embed", task_run_name="embed-{shard:05d}", **_RETRY_POLICY)
def embed_remote_task(store: str, gen: str, shard: int, model_id: str, backend_opts: dict[str, Any]) -> dict[str, Any]:
    """Run one whole shard on Modal, where the store's Volume is (`store` is `modal:VOLUME/PATH`):
    only the reference goes out and only the marker comes back; return it plus the attempts it took."""
    from prefect.runtime import task_run

    with counted_attempts():
        shards = ModalShards(backend_opts["modal_app"], backend_opts["modal_class"], model_id=model_id, gpu=backend_opts["gpu"])
        marker = shards.run(mount_path(store), gen, shard)
    Progress.current().add_chunks(int(marker.get("chunks", 0)))
    return {**marker, "attempts": task_run.run_count or 1}


@task(name="embed", task_run_name="embed-{shard:05d}", **_RETRY_POLICY)
def embed_worker_task(
    store: str, gen: str, shard: int, backend_opts: dict[str, Any], workers: int | None = None, reuse_gen: str | None = None
) -> dict[str, Any]:
    """Run one whole shard (chunk, embed, checkpoint) in a worker process of this machine; return
    its marker, the worker's pid and the attempts it took."""
    from prefect.runtime import task_run

    with counted_attempts():
        marker = run_in_worker(store, gen, shard, backend_opts, workers=workers, reuse_gen=reuse_gen)
    Progress.current().add_chunks(int(marker.get("chunks", 0)))
    return {**marker, "attempts": task_run.run_count or 1}
