"""The store's operations, run where the store is: one whole shard, and the store's own small steps.

The executors call these functions: in the flow's process for a local store, in a shard worker
process (`wikiembed.shard_workers`), or in a Modal container at a store's Volume. With
`--backend modal` the flow fans out shard references, not text: a GPU
container runs `run_shard` on the store mounted from a Modal Volume (read the
shard's rows from the snapshot, chunk, embed, write `data/NNNNN.parquet`, then its
marker) and returns the marker; before the first shard, one such container fixes the
generation's int8 ranges (`calibrate_store`). The flow's machine never sees a chunk or a vector;
it reads the store's manifest and shard states, records failures and forgets shards
to rerun through the `StoreOps` functions below, run in a CPU container at the same
mount. Each function is plain code over a store root and a `StoreSync`, so tests
run exactly this code in local processes.

Every function starts with `refresh()` (a Volume `reload()`: see what others
committed) and commits what it writes; `Store.mark_done` commits a shard's data
before its marker.

Touches: the store under `root` (through `wikiembed.store`), the backend that embeds.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping

from wikiembed.backends.base import Backend
from wikiembed.backends.factory import BackendOptions
from wikiembed.calibration import calibrate
from wikiembed.compact import Int8Calibration
from wikiembed.embedding import VectorSource, embed_shard, record_vector_kind
from wikiembed.chunking import chunk_shard_parts
from wikiembed.memory import release_free_memory
from wikiembed import reuse_index
from wikiembed.plan import prepare, promote
from wikiembed.snapshots import diff_generations
from wikiembed.records import Marker
from wikiembed.reuse_index import ReuseIndex
from wikiembed.card import write_card
from wikiembed.publish import publish
from wikiembed.results import Exported, Published, ShardStatus
from wikiembed.settings import RunSettings
from wikiembed.store import Store
from wikiembed.store_files import LOCAL, StoreSync
from wikiembed.store_results import GenerationView, Planned

# The manifest fields the flow reads (the rest stays in the store).
MANIFEST_VIEW = ("source", "model", "chunking", "plan", "settings", "skipped", "compact", "generation", "previous_generation", "base",
                 "changes")


def run_shard(
    root: str,
    gen: str,
    shard: int,
    backend: Backend | BackendOptions,
    sync: StoreSync = LOCAL,
    *,
    chunk_workers: int | None = None,
    reuse: VectorSource | None = None,
    reuse_previous: bool = False,
) -> Marker:
    """Chunk and embed one shard into `data/NNNNN.parquet` + `_done/NNNNN.json`; return the marker.

    `backend` is an open backend (a container's TEI client or engine) or the run's
    `BackendOptions`, opened once per process.
    `chunk_workers`: processes the token chunker may use (default: every core; 1 where this
    process is already one of a pool, `wikiembed.shard_workers`). `reuse`: vectors of the
    published generation, taken where a chunk's text is unchanged; `reuse_previous`: the same,
    from the generation the manifest names as previous (its key files made by `prepare_store`).

    Idempotent: a shard whose marker is already committed is returned as is, so an input
    that Modal reschedules after a crash (or the flow retries after a lost answer) costs
    one marker read. A container killed between its data and its marker left data without
    a marker, which is "not done": the shard is redone from the snapshot.
    """
    store = Store(root, gen, sync)
    store.refresh()
    manifest = store.read_manifest()
    marker = store.read_done(shard, manifest)
    if marker is not None:
        return marker
    if isinstance(backend, BackendOptions):
        backend = backend.open(manifest.model.model_id)
    start, end = manifest.plan.shards[shard]
    if reuse is None and reuse_previous and manifest.previous_generation:
        reuse = reuse_index.shared(root, manifest.previous_generation, sync)
    # Embedding starts with the shard's first chunks while worker processes cut the rest, so
    # the GPU and the CPU work at the same time; the chunk file is complete before the marker.
    with contextlib.closing(chunk_shard_parts(store, shard, manifest, chunk_workers)) as chunks:
        return embed_shard(store, shard, backend, end - start, chunks=chunks, reuse=reuse)  # writes the store's compact forms too


def calibrate_store(root: str, gen: str, backend: Backend | BackendOptions, sync: StoreSync = LOCAL) -> Int8Calibration | None:
    """The calibrate step at the store: the generation's int8 ranges, embedded by this container's
    backend and committed to its manifest before any shard reads it (see `wikiembed.calibration`)."""
    sync.reload()
    calibration = calibrate(Store(root, gen, sync), backend)
    sync.commit()
    return calibration


def prepare_store(settings: RunSettings | Mapping[str, Any], sync: StoreSync = LOCAL) -> Planned:
    """The download step at the store: snapshot the source and fix the shard plan (see `plan.prepare`).

    A new generation of a published store gets the key files of the published one's data files
    made here where they are missing (files written before keys were kept beside them), once, so the
    shard containers load keys rather than each reading every old chunk, and the articles added,
    edited and removed since (`changes`), counted where both snapshots are. `settings`: the run's, or
    their JSON (what a container receives).
    """
    sync.reload()
    prepared = prepare(settings if isinstance(settings, RunSettings) else RunSettings(**settings))
    changes = prepared.manifest.changes
    if prepared.previous_gen:
        previous = Store(prepared.store.root, prepared.previous_gen, sync)
        ReuseIndex(previous).save()
        if changes is None:
            changes = diff_generations(previous, prepared.store)
    sync.commit()
    release_free_memory()  # what planning held: the shards that follow do not run on top of it
    return Planned(str(prepared.store.root), prepared.store.gen, prepared.previous_gen, changes)


def view_store(root: str, gen: str | None = None, sync: StoreSync = LOCAL, with_states: bool = True,
               verify: bool = False) -> GenerationView:
    """What the flow and `status` need: the generation, the manifest's control fields, each shard's
    state (without its marker: tens of bytes a shard, so 10,000 shards are well under a megabyte;
    `verify` rehashes every data file, as `status --verify` does), and the `current`/`next` pointers."""
    store = Store(root, gen, sync)
    store.refresh()
    manifest = store.read_manifest()
    states = store.states(manifest, verify=verify) if with_states else []
    return GenerationView(
        store.gen,
        manifest.model_dump(mode="json", include=set(MANIFEST_VIEW)),
        tuple(ShardStatus(s.shard, s.state, s.rows, s.chunks, s.error, s.attempts) for s in states),
        {name: store.pointer(name) for name in ("current", "next")},
    )


def mark_failed(root: str, gen: str, shard: int, error: str, attempts: int, sync: StoreSync = LOCAL) -> None:
    store = Store(root, gen, sync)
    store.refresh()
    store.mark_failed(shard, error, attempts)


def forget(root: str, gen: str, shards: list[int], sync: StoreSync = LOCAL) -> None:
    """Make shards pending again (for reruns)."""
    store = Store(root, gen, sync)
    store.refresh()
    for k in shards:
        store.forget(k)


def export_store(root: str, gen: str, upload_to: str | None, sync: StoreSync = LOCAL) -> Exported:
    """The export step at the store: card, promotion of `gen`, then the upload (`hub:` / `dir:`)."""
    store = Store(root, gen, sync)
    store.refresh()
    record_vector_kind(store)  # from the markers, which on a Volume only containers can read
    write_card(store.dir)
    promoted = promote(store)
    sync.commit()  # published in the store before the upload: a failed upload leaves it so
    published = publish(Store(root).root, upload_to) if upload_to else None
    if published is not None:
        sync.commit()  # what the upload wrote on the Volume: a `dir:` folder there, the store's staging folder
    return Exported(promoted, published)


def publish_store(root: str, target: str, options: Mapping[str, Any], sync: StoreSync = LOCAL) -> Published:
    """`wikiembed export` / `upload` at the store: its done shards to `hub:ORG/NAME` or `dir:PATH`
    (see `publish.publish`, which takes `options`); what it writes in the store (the card, the
    staging folder) and a `dir:` folder on the same Volume are committed."""
    sync.reload()
    published = publish(Store(root).root, target, **options)
    sync.commit()
    return published
