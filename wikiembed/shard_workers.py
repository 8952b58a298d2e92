"""Whole shards on every core of the flow's machine: a pool of worker processes running `run_shard`.

With `--backend tei` every chunk is sent from the machine that runs the flow and
every vector comes back to it. In one process the chunker, the JSON of the
requests, the decoding of the answers, the checks and the parquet writer all
take turns on one interpreter, so a run could go no faster than one core however
many TEI servers answer. Here each shard runs whole in a worker process (the
same `wikiembed.store_ops.run_shard` a Modal container runs: chunk, embed, write
data, then its marker), one worker per core by default, and the flow's embed
task waits for the shard's marker.

Each worker opens its TEI client once (`open_backend` keeps it for the process)
and takes its share of the servers' permits, so all workers together keep the
bound on inputs in flight that one client keeps. A worker chunks in its own
process: the workers already fill the cores, and a tokenizing pool under each
would only oversubscribe them.

The workers are a `wikiembed.worker_pool.WorkerPool`, as the tokenizing pool's are (spawned,
leaving when orphaned, ignoring the terminal's Ctrl-C). The pool lives for one run (`release` at
its end drops the workers with their clients and indexes).

A worker that dies mid-shard (SIGKILL, out of memory) breaks the pool: every
shard in it fails with a `TransientBackendError`, which the embed task retries
on a fresh pool. Such a shard has no marker, so it is never taken for done; its
temp file is removed at once, and its data file, if any, is an earlier complete
one (files are renamed into place whole).

Touches: worker processes; in them, the run store (through `run_shard`) and the TEI servers.
"""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool

from wikiembed.backends.factory import BackendOptions
from wikiembed.errors import TransientBackendError
from wikiembed.records import ShardResult
from wikiembed import reuse_index
from wikiembed.store_ops import run_shard
from wikiembed.store import Store
from wikiembed.worker_pool import WorkerPool, cores

_POOL = WorkerPool()


def run(
    root: str, gen: str, shard: int, backend: BackendOptions, *, workers: int | None = None, reuse_gen: str | None = None
) -> ShardResult:
    """Run shard `shard` in a worker process (`workers` of them, default one per core); wait for it.

    Returns the shard's marker plus `worker_pid` (the process that ran it) and
    `request_retries` (requests its TEI client retried for this shard).
    """
    workers = workers or cores()
    pool = _POOL.get(workers)
    try:
        return pool.submit(_run_in_worker, root, gen, shard, backend, workers, reuse_gen).result()
    except BrokenProcessPool as exc:
        _POOL.drop(pool, wait=True)  # returns once every worker of the broken pool is gone (and reaped)
        removed = Store(root, gen).clean_temp_files()  # files of dead processes only (by the pid in their names)
        raise TransientBackendError(
            f"shard {shard:05d}: a shard worker process died ({exc}; {removed} temp file(s) removed); "
            "the shard has no marker and is redone in a new worker. If workers keep dying, look for the "
            "out-of-memory killer in the system log and lower --shard-workers."
        ) from None


def release() -> None:
    """End the workers (at the end of a run): their TEI clients and reuse indexes go with them."""
    _POOL.release()


def _run_in_worker(
    root: str, gen: str, shard: int, options: BackendOptions, workers: int, reuse_gen: str | None
) -> ShardResult:
    """Worker body: the shard through `run_shard`, with this process's client and index."""
    model = Store(root, gen).read_manifest().model.model_id
    backend = options.open(model, clients=workers)
    before = int(getattr(backend, "retries", 0))
    reuse = reuse_index.shared(root, reuse_gen) if reuse_gen else None
    marker = run_shard(root, gen, shard, backend, chunk_workers=1, reuse=reuse)
    return ShardResult.model_validate(
        {**marker.model_dump(), "worker_pid": os.getpid(), "request_retries": int(getattr(backend, "retries", 0)) - before}
    )
