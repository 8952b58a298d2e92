"""Modal app `wikiembed-store`: the run store's own operations, run where its Volume is mounted.

What it may touch: on Modal, the store Volume (`wikiembed-store` by default), the
`huggingface` secret, and the network (the Hub: the source dataset comes down
into the Volume, the finished dataset goes up from it; neither passes through the
machine that runs the flow). CPU only.

The flow and the CLI reach it through `wikiembed.volume_store.VolumeStore` for any
`--store modal:VOLUME/PATH`: `prepare` (the download step: snapshot + shard plan),
`view` (manifest and shard states), `mark_failed`, `forget`, `export` (card,
promotion, upload), `publish` (`wikiembed export` / `upload`). Each method is one
call to `wikiembed.store_ops`, which reloads the Volume before reading and commits
after writing. The GPU side (whole shards) is `TEIShards` / `TorchShards` in
`tei_app.py` / `torch_app.py`, on the same Volume.

Deploy (the Volume is chosen at deploy time and must be the one the shard classes mount):

    modal secret create huggingface HF_TOKEN=hf_...
    modal deploy modal_workers/store_app.py          # WIKIEMBED_STORE_VOLUME=name for another Volume
"""

# No `from __future__ import annotations` here: Modal reads the `volume: str` parameter's type at
# decoration time and needs the real type, not a string.
from typing import Any

import modal

from wikiembed import store_ops
from wikiembed.backends.modal_client import STORE_APP
from wikiembed.errors import InputError
from wikiembed.volume_store import DEFAULT_VOLUME, STORE_MOUNT, VolumeSync

from modal_workers.common import FLOW_RETRIES, PYTHON_VERSION, STORE_VOLUME, packages

# ---------------------------------------------------------------------------
# Knobs: every tunable, once, with its reason
# ---------------------------------------------------------------------------

# The download step writes the source snapshot (English Wikipedia: ~20 GB of parquet) and the
# export step merges and uploads the dataset: hours of headroom, CPU and memory for pyarrow.
TIMEOUT_S = 6 * 3600
CPU = 4.0
MEMORY_MB = 16384

# Calls are small and quick (a status, a failure record), but they all reload the Volume, which
# needs no open file: one call at a time per container keeps a reload from racing a write.
CONCURRENT_INPUTS = 1

# Errors are retried by the flow's tasks (Prefect), never here as well.
RETRIES = FLOW_RETRIES

# ---------------------------------------------------------------------------
# Modal: image, volume, the class
# ---------------------------------------------------------------------------

app = modal.App(STORE_APP)

store_volume = modal.Volume.from_name(STORE_VOLUME, create_if_missing=True)

image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    .pip_install(*packages("datasets", "hf_xet", "blingfire", "transformers", "httpx"))
    .env({"HF_XET_HIGH_PERFORMANCE": "1", "WIKIEMBED_STORE_VOLUME": STORE_VOLUME})
    .add_local_python_source("wikiembed", "modal_workers")
)


@app.cls(
    image=image,
    cpu=CPU,
    memory=MEMORY_MB,
    volumes={STORE_MOUNT: store_volume},
    secrets=[modal.Secret.from_name("huggingface")],
    retries=RETRIES,
    timeout=TIMEOUT_S,
)
@modal.concurrent(max_inputs=CONCURRENT_INPUTS)
class StoreOps:
    # The Volume the caller means (`modal:VOLUME/PATH`), checked against the one mounted here.
    volume: str = modal.parameter(default=DEFAULT_VOLUME)

    @modal.enter()
    def check(self) -> None:
        if self.volume != STORE_VOLUME:
            raise InputError(
                f"store Volume {self.volume!r} is not the one this app mounts ({STORE_VOLUME!r}); "
                f"redeploy with WIKIEMBED_STORE_VOLUME={self.volume} modal deploy modal_workers/store_app.py "
                "(and the shard apps the same way)."
            )
        self.sync = VolumeSync(store_volume)

    # Answers cross Modal's wire as plain JSON (each record's `to_json()`): the caller reads them back into
    # records (`wikiembed.volume_store.VolumeStore`), whatever version of wikiembed it runs.

    @modal.method()
    def prepare(self, settings: dict[str, Any]) -> dict[str, Any]:
        return store_ops.prepare_store(settings, self.sync).to_json()

    @modal.method()
    def view(self, root: str, gen: str | None, with_states: bool = True, verify: bool = False) -> dict[str, Any]:
        return store_ops.view_store(root, gen, self.sync, with_states, verify).to_json()

    @modal.method()
    def mark_failed(self, root: str, gen: str, shard: int, error: str, attempts: int) -> None:
        store_ops.mark_failed(root, gen, shard, error, attempts, self.sync)

    @modal.method()
    def forget(self, root: str, gen: str, shards: list[int]) -> None:
        store_ops.forget(root, gen, shards, self.sync)

    @modal.method()
    def export(self, root: str, gen: str, upload_to: str | None) -> dict[str, Any]:
        return store_ops.export_store(root, gen, upload_to, self.sync).to_json()

    @modal.method()
    def publish(self, root: str, target: str, options: dict[str, Any]) -> dict[str, Any]:
        return store_ops.publish_store(root, target, options, self.sync).to_json()
