"""`--backend tei`: whole shards in worker processes of the flow's machine, embedded by TEI servers.

Each shard runs whole (chunk, embed, checkpoint) in a process of `wikiembed.shard_workers`'s
pool, one per core by default, so the chunker, the requests and the parquet writer of one
shard never wait for another's interpreter; the embed task waits for the shard's marker.

Touches: worker processes; in them, the run store's folder and the TEI servers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wikiembed import shard_workers
from wikiembed.executors.base import MAX_CONCURRENCY, ShardJob
from wikiembed.executors.on_disk import OnDisk
from wikiembed.progress import Progress
from wikiembed.records import ShardResult
from wikiembed.tokenizing import cores

if TYPE_CHECKING:
    from wikiembed.model import ModelInfo

# Enough shards in flight to keep remote GPUs busy.
REMOTE_CONCURRENCY = 16


class WorkerProcesses(OnDisk):
    name = "tei"

    @classmethod
    def check_model(cls, info: "ModelInfo", trust_remote_code: bool) -> None:
        """Nothing to check here: a TEI server runs its own model code; its /info is checked when it is reached."""

    def run_shard(self, job: ShardJob) -> ShardResult:
        marker = shard_workers.run(
            job.root, job.gen, job.shard, self.backend, workers=self.settings.compute.shard_workers, reuse_gen=job.reuse_gen
        )
        Progress.current().add_chunks(marker.chunks)
        return marker

    def default_concurrency(self) -> int:
        # Every shard worker busy, with its next shard queued behind it.
        return min(max(REMOTE_CONCURRENCY, 2 * (self.settings.compute.shard_workers or cores())), MAX_CONCURRENCY)

    def device(self, model: str, embedded: bool) -> str:
        return ", ".join(self.settings.compute.tei_url)

    def end_run(self, root: str, reuse_gen: str | None) -> None:
        shard_workers.release()  # the workers go, with their TEI clients and reuse indexes
        super().end_run(root, reuse_gen)
