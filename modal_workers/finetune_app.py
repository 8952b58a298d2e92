"""Modal app `wikiembed-finetune`: the improve loop's GPU steps, next to the store's Volume.

`Finetune.run` is `wikiembed.finetune` (the model trained on the store's own vectors, written onto the
Volume); `Finetune.compare` is the loop's comparison (`wikiembed.evaluate.compare_at_store`: the old
and the re-embedded store scored on the held-out queries, each query embedded by its store's model).
The `improve-model` flow and `wikiembed finetune --store modal:VOLUME/PATH` call them through
`wikiembed.backends.modal_client.FinetuneApp`.

What it may touch: on Modal, the container's GPU, the store Volume (`wikiembed-store` by default:
the stores' data files and the pairs file are read there, the model folder is written there) and the
`wikiembed-hf-cache` Volume (base model weights). Neither the vectors nor the model pass through the
machine that asks for the fine-tune: it sends paths on the Volume and gets the record back.

Deploy (the GPU type and the Volume are read at import, when Modal evaluates the decorators):

    WIKIEMBED_GPU=L40S modal deploy modal_workers/finetune_app.py

Call (the pairs file first goes up with `modal volume put wikiembed-store pairs.jsonl feedback/`):

    import modal
    Finetune = modal.Cls.from_name("wikiembed-finetune", "Finetune")
    record = Finetune(volume="wikiembed-store").run.remote("wiki-minilm", "feedback/pairs.jsonl", "models/2026-w49", {"epochs": 1})
    compared = Finetune(volume="wikiembed-store").compare.remote("wiki-minilm", "wiki-minilm-w49", "models/2026-w49/heldout.jsonl")
"""

# No `from __future__ import annotations`: Modal reads parameter types at decoration time.
import os
from typing import Any

import modal

from wikiembed.errors import InputError
from wikiembed.evaluate import compare_at_store
from wikiembed.finetune import finetune_at_store
from wikiembed.store_files import LOCAL
from wikiembed.volume_store import DEFAULT_VOLUME, STORE_MOUNT, VolumeSync

from modal_workers.common import CACHE_DIR, CACHE_VOLUME, FLOW_RETRIES, PYTHON_VERSION, STORE_VOLUME, gpu_type, packages

# ---------------------------------------------------------------------------
# Knobs: every tunable, once, with its reason
# ---------------------------------------------------------------------------

APP_NAME = "wikiembed-finetune"

# A small encoder fine-tunes in minutes on any current GPU; the cached loss keeps large batches
# within its memory. `WIKIEMBED_GPU=H100 modal deploy ...` for big models or many pairs.
GPU = gpu_type("L40S")

# Mining reads the store's vectors once and the held-out pool is re-embedded twice: a few minutes for
# Wikipedia-sized stores on top of training; hours of headroom for many epochs.
TIMEOUT_S = 4 * 3600
CPU = 8.0
MEMORY_MB = 32768

# Where the store Volume is seen, to run the class off Modal (tests: a local folder standing for the Volume).
MOUNT_ENV = "WIKIEMBED_FINETUNE_MOUNT"

# The flow's task retries a failed fine-tune (Prefect); a retry here as well would train twice.
RETRIES = FLOW_RETRIES

# ---------------------------------------------------------------------------
# Modal: image, volumes, the class
# ---------------------------------------------------------------------------

app = modal.App(APP_NAME)

store_volume = modal.Volume.from_name(STORE_VOLUME, create_if_missing=True)
cache_volume = modal.Volume.from_name(CACHE_VOLUME, create_if_missing=True)

image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    .pip_install(*packages("torch", "sentence-transformers", "accelerate", "datasets", "transformers", "hf_xet"))
    .env({"HF_HOME": CACHE_DIR, "WIKIEMBED_GPU": GPU, "WIKIEMBED_STORE_VOLUME": STORE_VOLUME})
    .add_local_python_source("wikiembed", "modal_workers")
)


def at_mount(path: str, mount: str = STORE_MOUNT) -> str:
    """A path on the Volume as the container sees it."""
    return f"{mount}/{path.strip('/')}"


@app.cls(
    gpu=GPU,
    image=image,
    cpu=CPU,
    memory=MEMORY_MB,
    volumes={STORE_MOUNT: store_volume, CACHE_DIR: cache_volume},
    secrets=[modal.Secret.from_name("huggingface")],
    retries=RETRIES,
    timeout=TIMEOUT_S,
)
class Finetune:
    """One fine-tune or one comparison per call: Volume paths in, the record or the figures out."""

    # The Volume the caller means (`modal:VOLUME/PATH`), checked against the one mounted here.
    volume: str = modal.parameter(default=DEFAULT_VOLUME)

    @modal.enter()
    def attach(self) -> None:
        if self.volume != STORE_VOLUME:
            raise InputError(
                f"store Volume {self.volume!r} is not the one this app mounts ({STORE_VOLUME!r}); "
                f"redeploy with WIKIEMBED_STORE_VOLUME={self.volume} modal deploy modal_workers/finetune_app.py."
            )
        # Off Modal (`.local()`), the folder standing for the Volume is an ordinary disk: nothing to sync.
        self.sync = LOCAL if modal.is_local() else VolumeSync(store_volume)
        self.mount = os.environ.get(MOUNT_ENV) or STORE_MOUNT

    @modal.method()
    def run(self, store: str, pairs: str, out: str, settings: dict[str, Any]) -> dict[str, Any]:
        record = finetune_at_store(at_mount(store, self.mount), at_mount(pairs, self.mount), at_mount(out, self.mount),
                                   settings, self.sync)
        if not modal.is_local():
            cache_volume.commit()  # keep the base weights the first container downloaded
        return record

    @modal.method()
    def compare(self, old: str, new: str, queries: str) -> dict[str, Any]:
        # The check's JSON (`EvalResult.to_json()`): plain JSON crosses Modal's wire.
        return compare_at_store(at_mount(old, self.mount), at_mount(new, self.mount), at_mount(queries, self.mount),
                                self.sync).to_json()
