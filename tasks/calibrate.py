"""The calibrate step: fix a generation's int8 ranges before any shard is embedded.

Every shard must quantize with the same ranges, or int8 vectors of different shards would not be
comparable; so they are set once per generation, from a fixed sample (the first
`CALIBRATION_CHUNKS` chunks of the snapshot, in order), and recorded in the manifest, where every
shard task (local or remote) reads them. A new generation of the same store keeps the published
generation's ranges, so unchanged chunks keep byte-identical int8 codes.

Touches: the generation's snapshot (read) and `manifest.json` (written), the backend (one call).
"""

from __future__ import annotations

from typing import Any

from prefect import task

from wikiembed.backends.factory import open_backend
from wikiembed.chunking import Chunking, chunk_table
from wikiembed.compact import CALIBRATION_CHUNKS, calibrate_int8, spec_from_manifest
from wikiembed.model import load_tokenizer
from wikiembed.sources import read_snapshot_rows
from wikiembed.store import Store
from wikiembed.tasks.retry import retry_transient

# Articles chunked per step while collecting the calibration sample.
_ARTICLES_PER_STEP = 64


def calibration_texts(store: Store, manifest: dict[str, Any], n: int = CALIBRATION_CHUNKS) -> list[str]:
    """The first `n` chunk texts of the generation, in snapshot order (deterministic)."""
    rows = int(manifest["plan"]["rows"])
    chunking = Chunking(**manifest["chunking"])
    tokenizer = load_tokenizer(manifest["model"]["model_id"]) if chunking.chunker == "tokens" else None
    texts: list[str] = []
    start = 0
    while len(texts) < n and start < rows:
        end = min(start + _ARTICLES_PER_STEP, rows)
        texts += chunk_table(read_snapshot_rows(store.snapshot_path, start, end), chunking, tokenizer).column("text").to_pylist()
        start = end
    return texts[:n]


@task(name="calibrate", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient)
def calibrate_task(store: str, gen: str, backend_opts: dict[str, Any]) -> dict[str, Any] | None:
    """Record the generation's int8 ranges in its manifest if it stores int8 and has none yet."""
    s = Store(store, gen)
    manifest = s.read_manifest()
    spec = spec_from_manifest(manifest)
    compact = manifest.get("compact") or {}
    if spec is None or "int8" not in spec.precisions or compact.get("int8"):
        return compact.get("int8")
    previous = manifest.get("previous_generation")
    if previous:
        published = Store(store, previous).read_manifest()
        if published.get("compact", {}) and {**published["compact"], "int8": None} == {**compact, "int8": None}:
            calibration = published["compact"].get("int8")
            if calibration:
                s.write_manifest({**manifest, "compact": {**compact, "int8": calibration}})
                return calibration
    backend = open_backend(model=manifest["model"]["model_id"], **backend_opts)
    vectors = backend.embed(calibration_texts(s, manifest))
    calibration = calibrate_int8(vectors, spec.dims(int(manifest["model"]["dim"])))
    s.write_manifest({**manifest, "compact": {**compact, "int8": calibration}})
    return calibration
