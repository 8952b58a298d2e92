"""Int8 calibration: a generation's quantization ranges, fixed once before any shard is embedded.

Every shard must quantize with the same ranges, or int8 vectors of different shards would not be
comparable; so they are set once per generation, from a fixed sample (the first
`CALIBRATION_CHUNKS` chunks of the snapshot, in order), and recorded in the manifest, where every
shard (local or remote) reads them. A new generation of the same store keeps the published
generation's ranges, so unchanged chunks keep byte-identical int8 codes.

Plain code that takes a store: the flow's calibrate task runs it on its machine for a local
store, a Modal shard container (`wikiembed.store_ops.calibrate_store`) at the Volume for a Volume
store, with the backend that embeds the shards, so both give the same ranges.

Touches: the generation's snapshot (read) and `manifest.json` (written), the backend (one call).
"""

from __future__ import annotations

from wikiembed.backends.base import Backend
from wikiembed.backends.factory import BackendOptions
from wikiembed.embedding import document_prompt
from wikiembed.chunking import chunk_table
from wikiembed.compact import CALIBRATION_CHUNKS, Int8Calibration, calibrate_int8, spec_from_manifest
from wikiembed.model import load_tokenizer
from wikiembed.sources import read_snapshot_rows
from wikiembed.store import Store
from wikiembed.records import Manifest

# Articles chunked per step while collecting the calibration sample.
_ARTICLES_PER_STEP = 64


def calibration_texts(store: Store, manifest: Manifest, n: int = CALIBRATION_CHUNKS) -> list[str]:
    """The first `n` chunk texts of the generation, in snapshot order (deterministic)."""
    rows = int(manifest.plan.rows)
    chunking = manifest.chunking
    tokenizer = load_tokenizer(manifest.model.model_id) if chunking.chunker == "tokens" else None
    texts: list[str] = []
    start = 0
    while len(texts) < n and start < rows:
        end = min(start + _ARTICLES_PER_STEP, rows)
        rows_table = read_snapshot_rows(store.snapshot_path, start, end)
        texts += chunk_table(rows_table, chunking, tokenizer, prompt=document_prompt(manifest)).column("text").to_pylist()
        start = end
    return texts[:n]


def needs_calibration(manifest: Manifest) -> bool:
    """Whether the generation stores int8 and has no ranges yet."""
    spec = spec_from_manifest(manifest)
    return spec is not None and "int8" in spec.precisions and not manifest.int8


def calibrate(store: Store, backend: Backend | BackendOptions) -> Int8Calibration | None:
    """Record the generation's int8 ranges in its manifest if it stores int8 and has none yet;
    return them (None: the generation stores no int8). `backend`: an open backend, or the options
    of `open_backend`, opened only when the sample must be embedded."""
    manifest = store.read_manifest()
    compact = manifest.compact
    if compact is None or not needs_calibration(manifest):
        return Int8Calibration.of(manifest)
    previous = manifest.previous_generation
    if previous:
        published = Store(store.root, previous, store.sync).read_manifest()
        if published.compact and published.compact.forms() == compact.forms() and published.compact.int8:
            kept = published.compact.int8  # as the published manifest holds it
            store.write_manifest(manifest.changed(compact=compact.changed(int8=kept)))
            return Int8Calibration.from_json(kept)
    if isinstance(backend, BackendOptions):
        backend = backend.open(manifest.model.model_id)
    spec = spec_from_manifest(manifest)
    assert spec is not None
    vectors = backend.embed(calibration_texts(store, manifest), document_prompt(manifest))
    calibration = calibrate_int8(vectors, spec.dims(int(manifest.model.dim)))
    store.write_manifest(manifest.changed(compact=compact.changed(int8=calibration.to_json())))
    return calibration
