"""`--backend local`: shards in threads of the flow's process, embedded by the PyTorch engine.

A shard is chunked (`chunks/NNNNN.parquet`, cut by the tokenizing pool) and then embedded by
the process's one engine (`open_backend` shares it between shard tasks, which take turns on
it); with two shards in flight one is chunking on the CPU while the engine embeds the other.
One shard is chunked at a time: the pool cuts the first shard's parts before the next one's, so
the engine starts as soon as one shard is cut (at a run's start, two shards cut together would
both be ready only after twice that).

Touches: the run store's folder, the engine (CPU or the local GPU).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from wikiembed import reuse_index
from wikiembed.embedding import embed_shard
from wikiembed.chunking import chunk_shard
from wikiembed.executors.base import Planned, ShardJob
from wikiembed.executors.on_disk import OnDisk
from wikiembed.memory import release_free_memory
from wikiembed.model import WAY_OUT_ELSEWHERE
from wikiembed.snapshots import check_snapshot
from wikiembed.progress import Progress
from wikiembed.records import Marker
from wikiembed.store import Store

if TYPE_CHECKING:
    from wikiembed.settings import ComputeOptions

# Held while a shard is chunked: the shard tasks of this process take turns on the tokenizing pool.
_CHUNKING = threading.Lock()


class InProcess(OnDisk):
    name = "local"
    unsupported_model_way_out = WAY_OUT_ELSEWHERE

    @classmethod
    def rate_hardware(cls, compute: "ComputeOptions") -> str | None:
        """The CPU, or the local CUDA device by its name among the priced GPUs."""
        if compute.device == "cpu":
            return "CPU"
        import torch

        from wikiembed.rates import GPUS

        if not torch.cuda.is_available():
            return "CPU"
        name = torch.cuda.get_device_name(0).upper()
        return next((g for g in GPUS if g in name.split() or g in name), None)

    def check(self) -> None:
        super().check()
        # The model is loaded before the store is touched: a model folder that cannot embed must not
        # be recorded as the store's model, nor leave a lock file in a new folder.
        self.check_backend(self.settings.model)

    def prepare(self) -> Planned:
        planned = super().prepare()
        if planned.previous_gen:
            # The shard tasks' reuse index is loaded before any shard is in flight: building it holds
            # about twice what it keeps, which would otherwise come on top of the first shards' own.
            index = reuse_index.shared(planned.store, planned.previous_gen)
            if index is not None:
                index.load()
                release_free_memory()
        return planned

    def run_shard(self, job: ShardJob) -> Marker:
        store = Store(job.root, job.gen)
        manifest = store.read_manifest()
        try:
            with _CHUNKING:
                chunk_shard(store, job.shard, manifest)
        except (OSError, pa.ArrowException):
            check_snapshot(store, manifest)  # a damaged snapshot: say so, and name the repair
            raise
        backend = self.backend.open(job.model)
        reuse = reuse_index.shared(job.root, job.reuse_gen) if job.reuse_gen else None
        start, end = manifest.plan.shards[job.shard]
        return embed_shard(store, job.shard, backend, end - start, reuse=reuse, progress=Progress.current().add_chunks)

    def timing_engine(self, model: str) -> Any:
        # A GPU is not timed: the sample's few hundred chunks are a batch or two, far from the full
        # groups a shard hands it, so their rate would say more about the launch than the card.
        engine = self.backend.open(model)
        return engine if str(getattr(engine, "device", "")).startswith("cpu") else None

    def device(self, model: str, embedded: bool) -> str | None:
        # The engine says which device it chose; it is asked only when shards were embedded here
        # (so it is already open), never opened to report: None when it chose none.
        if not embedded:
            return None if self.settings.compute.device == "auto" else self.settings.compute.device
        return str(getattr(self.backend.open(model), "device", None) or "the local device")
