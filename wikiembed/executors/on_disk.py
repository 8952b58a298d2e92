"""The half the on-machine executors share: a store in a folder of the flow's machine.

The download, calibrate and export steps run in the flow's process on the store's files
(`wikiembed.store_ops`: the same functions a Modal container runs at a Volume); a rerun is
checked here before it starts. `InProcess` and `WorkerProcesses` differ only in where a shard's
chunks are embedded.

Touches: the run store's folder, the backend (calibration sample), the publish target.
"""

from __future__ import annotations

from wikiembed import reuse_index, store_ops
from wikiembed.calibration import calibrate
from wikiembed.compact import Int8Calibration
from wikiembed.embedding import record_vector_kind
from wikiembed.errors import InputError
from wikiembed.executors.base import Executor, Planned, StoreView
from wikiembed.model import model_info
from wikiembed.snapshots import check_snapshot
from wikiembed.store import Store
from wikiembed.records import Manifest, VectorKind
from wikiembed.results import Exported


class OnDisk(Executor):
    """An executor whose store is a folder of the flow's machine."""

    data_here = True
    rate_from_store = True

    def store(self, spec: str, gen: str | None = None) -> Store:
        return Store(spec, gen)

    def prepare(self) -> Planned:
        return store_ops.prepare_store(self.settings)

    def calibrate(self, root: str, gen: str) -> Int8Calibration | None:
        return calibrate(Store(root, gen), self.backend)

    def pin_kind(self, store: StoreView, kind: VectorKind | None = None) -> None:
        record_vector_kind(Store(store.root, store.gen), kind)

    def prepare_rerun(self, store: StoreView, manifest: Manifest, shards: list[int]) -> str | None:
        # A shard's old file and marker stay until its new file replaces them (atomically), so a
        # failed rerun loses nothing; everything it needs is checked before it starts.
        s = Store(store.root, store.gen)
        s.ensure_writable()
        check_snapshot(s, manifest)
        check_model_revision(s, manifest)
        self.check_backend(manifest.model.model_id)
        reuse_gen = manifest.previous_generation
        reuse_gen = reuse_gen if reuse_gen and Store(s.root, reuse_gen).exists() else None
        if reuse_gen:  # as the download step does: shard workers load it instead of each building it
            reuse_index.ReuseIndex(Store(s.root, reuse_gen)).save()
        return reuse_gen

    def export(self, root: str, gen: str, upload_to: str | None) -> Exported:
        return store_ops.export_store(root, gen, upload_to)


def check_model_revision(store: Store, manifest: Manifest) -> None:
    """A rerun redoes shards with the generation's own model: refuse (before any file changes) when the
    model's files are no longer the ones its other shards were embedded with."""
    recorded = manifest.model.revision
    info = model_info(manifest.model.model_id)
    if info.revision != recorded:
        raise InputError(
            f"model {manifest.model.model_id!r}: its files at {info.path} changed since store {store.root} was "
            f"embedded (revision {recorded} then, {info.revision} now), and a rerun must use the weights its other "
            "shards were made with. Put those files back to rerun; or, to embed with the new files, run the "
            "`wikiembed run` that made the store again: it builds a new generation from the new revision and "
            "publishes it when done. Nothing was changed."
        )
