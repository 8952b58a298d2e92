"""`--backend modal`: whole shards in Modal GPU containers, next to a store on a Modal Volume.

Only references go out (`modal:VOLUME/PATH`, the generation, a shard id) and only markers and
shard states come back: a container of the deployed shard class (`TEIShards` / `TorchShards`)
chunks, embeds and checkpoints the shard on the Volume (`wikiembed.store_ops.run_shard`); the
store's small operations (plan, states, failures, export) run in `StoreOps` containers at the
same mount (`wikiembed.volume_store.VolumeStore`). The flow's machine never sees a chunk or a
vector, so the run's estimate, eval sample and index are not made here (`data_here`).

Touches: Modal's API (the deployed apps, the lease Dict), through the user's Modal token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wikiembed.calibration import needs_calibration
from wikiembed.compact import Int8Calibration
from wikiembed.executors.base import MAX_CONCURRENCY, Executor, Planned, ShardJob, StoreView
from wikiembed.progress import Progress
from wikiembed.records import Manifest, Marker
from wikiembed.results import Exported
from wikiembed.volume_store import VolumeStore, mount_path

if TYPE_CHECKING:
    from wikiembed.backends.modal_client import ModalShards


class ModalContainers(Executor):
    name = "modal"
    data_here = False
    price_list = "modal"  # Modal bills per GPU-second
    runs_in_containers = True
    remote_code_refusal = ("the deployed Modal shard classes load models without running their code; embed it with "
                           "--backend local --trust-remote-code on a machine you trust it on")

    def store(self, spec: str, gen: str | None = None) -> VolumeStore:
        return VolumeStore(spec, gen)

    def prepare(self) -> Planned:
        # The source goes from the Hub into the Volume, in the cloud.
        return VolumeStore(self.settings.store).prepare(self.settings)

    def check_backend(self, model: str) -> None:
        """The shard containers open their own backend next to the Volume."""

    def request_retries(self, model: str) -> int:
        # Nothing opens here, and the model may be reachable only there (a fine-tuned folder on the
        # store's Volume): its files are never looked for on this machine.
        return 0

    def _shards(self, model: str) -> "ModalShards":
        from wikiembed.backends.modal_client import ModalShards  # lazy: the class's facts need no Modal client

        c = self.settings.compute
        return ModalShards(c.modal_app, c.modal_class, model_id=model, gpu=c.gpu)

    def calibrate(self, root: str, gen: str) -> Int8Calibration | None:
        manifest = VolumeStore(root, gen).read_manifest()
        if not needs_calibration(manifest):
            return Int8Calibration.of(manifest)
        # In a shard container at the Volume, with the backend that embeds the shards; the ranges come back as JSON.
        answer = self._shards(manifest.model.model_id).calibrate(mount_path(root), gen)
        return None if answer is None else Int8Calibration.from_json(answer)

    def run_shard(self, job: ShardJob) -> Marker:
        # The container takes the previous generation's vectors itself (its reuse index on the Volume).
        marker = Marker.model_validate(self._shards(job.model).run(mount_path(job.root), job.gen, job.shard))
        Progress.current().add_chunks(marker.chunks)
        return marker

    def prepare_rerun(self, store: StoreView, manifest: Manifest, shards: list[int]) -> str | None:
        for k in shards:  # a remote shard skips what its marker says is done
            store.forget(k)
        return None

    def export(self, root: str, gen: str, upload_to: str | None) -> Exported:
        return VolumeStore(root, gen).export(upload_to)

    def default_concurrency(self) -> int:
        # Shards beyond the deployed max_containers wait in Modal's queue at no cost; asking the
        # deployment its size would start a GPU container just to read a number.
        return MAX_CONCURRENCY

    def device(self, model: str, embedded: bool) -> str:
        c = self.settings.compute
        return f"Modal {c.modal_class} on {c.gpu or 'its deployed GPU'}"

    def tokenizer_choice(self) -> str:
        return "auto"  # the containers choose the fast path where it applies
