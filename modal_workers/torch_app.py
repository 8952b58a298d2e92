"""Modal app `wikiembed-torch`: the project's own PyTorch engine on GPUs, called as `Torch.embed`.

What it may touch: on Modal, the container's GPU, the `wikiembed-hf-cache`
Volume (model weights, shared with the TEI app) and the `huggingface` secret.
It runs `wikiembed.backends.engine.TorchEngine`, the same code as `--backend local`,
so the vectors match the local backend's; the engine is imported inside the
enter hook, so deploying (and importing this module) needs no torch locally.

Deploy (the GPU type is read at import, when Modal evaluates the decorators):

    modal secret create huggingface HF_TOKEN=hf_...
    WIKIEMBED_GPU=H100 modal deploy modal_workers/torch_app.py

Then `--backend modal --modal-class Torch` (see `wikiembed/backends/modal_client.py`).
Tests run the class in-process on the CPU (`WIKIEMBED_TORCH_DEVICE=cpu`).
"""

# No `from __future__ import annotations` here: Modal reads the `model_id: str` parameter's type at
# decoration time and needs the real type, not a string.
import os
import threading
import time
from typing import Any

import modal
import numpy as np

from wikiembed import store_ops
from wikiembed.backends.modal_client import APP_NAMES
from wikiembed.model import DEFAULT_MODEL
from wikiembed.volume_store import STORE_MOUNT, VolumeSync

from modal_workers.common import (
    CACHE_DIR, CACHE_VOLUME, EMBED_RETRIES, EMBED_TIMEOUT_S, FLOW_RETRIES, MAX_CONTAINERS, PYTHON_VERSION,
    SCALEDOWN_WINDOW_S, SHARD_CONCURRENT_INPUTS, STORE_VOLUME, gpu_type, packages,
)

# ---------------------------------------------------------------------------
# Knobs: every tunable, once, with its reason
# ---------------------------------------------------------------------------

APP_NAME = APP_NAMES["Torch"]

# GPU type, read at import (Modal evaluates decorators then): `WIKIEMBED_GPU=H100 modal deploy ...`.
# Any CUDA GPU works with this image; the engine's speed anchors were measured on an H100.
GPU = gpu_type("A10G")

# Inputs one container holds at once. The engine runs one batch at a time on the GPU (a lock
# serializes calls), so 2 is enough to have the next input's texts arrive while one computes,
# and low enough that Modal still spreads the load over containers.
CONCURRENT_INPUTS = 2
# What `describe` reports, so a client sizes its concurrency from what was deployed.
CAPACITY = {"max_containers": MAX_CONTAINERS, "concurrent_inputs": CONCURRENT_INPUTS}

# Modal re-runs an input whose container died (preemption, OOM); the per-input limit.
RETRIES = EMBED_RETRIES
TIMEOUT_S = EMBED_TIMEOUT_S
# Startup covers the first download of the weights into the Volume.
STARTUP_TIMEOUT_S = 600

# CPU cores per container: the engine tokenizes texts in one worker process per core while the
# GPU computes, and one H100 outruns the tokenizer on 16 cores (bge-small shape: ~17M chars/s on the
# GPU against ~15-20M for the tokenizer), so the container gets 16.
CPU = 16.0

# Engine knobs. None = the engine's own defaults (bf16 on CUDA, its tuned token budget).
MAX_BATCH_TOKENS: int | None = None
# torch.compile costs 18-29 s per container start for ~20% more speed: worth it only for long runs.
COMPILE = False
# Tokenizing worker processes; None = one per core the container has.
TOKENIZE_WORKERS: int | None = None

# Whole shards (`TorchShards`): one shard per container at a time (`SHARD_CONCURRENT_INPUTS`); errors a
# shard raises are retried by the flow's embed task (Prefect), never here as well.
SHARD_RETRIES = FLOW_RETRIES

# Model weights (`CACHE_VOLUME` at `CACHE_DIR`), in the huggingface_hub cache layout the TEI app shares.
VOLUME_NAME = CACHE_VOLUME

# Device override for running the class off-GPU (tests: "cpu"); unset means the engine's choice.
DEVICE_ENV = "WIKIEMBED_TORCH_DEVICE"


# ---------------------------------------------------------------------------
# The worker: a plain class, so tests run it without Modal
# ---------------------------------------------------------------------------


class TorchWorker:
    """The engine, loaded once per container, called by one input at a time."""

    def __init__(self, model_id: str = DEFAULT_MODEL, device: str | None = None) -> None:
        from wikiembed.backends.engine import TorchEngine  # lazily: torch is only in the worker image

        self.engine = TorchEngine(
            model_id,
            device=device,
            max_batch_tokens=MAX_BATCH_TOKENS,
            compile=COMPILE,
            tokenize_workers=TOKENIZE_WORKERS,
        )
        # Concurrent inputs would race for GPU memory; one batch at a time is also the fastest.
        self._lock = threading.Lock()

    def embed(self, texts: list[str], prompt: str = "") -> np.ndarray:
        with self._lock:
            return self.engine.embed(texts, prompt)

    def describe(self) -> dict[str, Any]:
        e = self.engine
        return {"model_id": e.model_id, "dim": e.dim, "max_tokens": e.max_tokens, "kind": e.kind.as_dict()}

    def close(self) -> None:
        with self._lock:  # let a running batch finish before the model goes
            self.engine.close()


# ---------------------------------------------------------------------------
# Modal: image, volume, the class
# ---------------------------------------------------------------------------

app = modal.App(APP_NAME)

cache_volume = modal.Volume.from_name(VOLUME_NAME, create_if_missing=True)
store_volume = modal.Volume.from_name(STORE_VOLUME, create_if_missing=True)

image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    .pip_install(*packages("torch", "transformers", "blingfire", "hf_xet"))
    # The container imports this module again: give it the deploy-time knobs (GPU, container count).
    .env({"HF_HOME": CACHE_DIR, "HF_XET_HIGH_PERFORMANCE": "1", "WIKIEMBED_GPU": GPU,
          "WIKIEMBED_MAX_CONTAINERS": str(MAX_CONTAINERS), "WIKIEMBED_STORE_VOLUME": STORE_VOLUME})  # fmt: skip
    .add_local_python_source("wikiembed", "modal_workers")
)


@app.cls(
    gpu=GPU,
    image=image,
    cpu=CPU,
    volumes={CACHE_DIR: cache_volume},
    secrets=[modal.Secret.from_name("huggingface")],
    max_containers=MAX_CONTAINERS,
    scaledown_window=SCALEDOWN_WINDOW_S,
    retries=RETRIES,
    timeout=TIMEOUT_S,
    startup_timeout=STARTUP_TIMEOUT_S,
)
@modal.concurrent(max_inputs=CONCURRENT_INPUTS)
class Torch:
    # One container pool per model: `Cls.from_name(APP_NAME, "Torch")(model_id=...)`.
    model_id: str = modal.parameter(default=DEFAULT_MODEL)

    @modal.enter()
    def load(self) -> None:
        self.worker = TorchWorker(self.model_id, device=os.environ.get(DEVICE_ENV) or None)
        if not modal.is_local():
            cache_volume.commit()  # keep weights the first container downloaded

    @modal.method()
    def embed(self, texts: list[str], prompt: str = "") -> np.ndarray:
        """float32 `[len(texts), dim]` of `prompt + text` each, as the model makes them, in order."""
        return self.worker.embed(texts, prompt)

    @modal.method()
    def describe(self) -> dict[str, Any]:
        """What this container serves: model_id, dim, max_tokens, the kind of vectors, plus the GPU."""
        return {**self.worker.describe(), "gpu": GPU, **CAPACITY}

    @modal.exit()
    def unload(self) -> None:
        self.worker.close()  # CPU threads and GPU memory


@app.cls(
    gpu=GPU,
    image=image,
    cpu=CPU,
    volumes={CACHE_DIR: cache_volume, STORE_MOUNT: store_volume},
    secrets=[modal.Secret.from_name("huggingface")],
    max_containers=MAX_CONTAINERS,
    scaledown_window=SCALEDOWN_WINDOW_S,
    retries=SHARD_RETRIES,
    timeout=TIMEOUT_S,
    startup_timeout=STARTUP_TIMEOUT_S,
)
@modal.concurrent(max_inputs=SHARD_CONCURRENT_INPUTS)
class TorchShards:
    """Whole shards: a store reference in, the shard's marker out (see `wikiembed.store_ops.run_shard`)."""

    model_id: str = modal.parameter(default=DEFAULT_MODEL)

    @modal.enter()
    def load(self) -> None:
        self.worker = TorchWorker(self.model_id, device=os.environ.get(DEVICE_ENV) or None)
        self.sync = VolumeSync(store_volume)
        if not modal.is_local():
            cache_volume.commit()  # keep weights the first container downloaded

    @modal.method()
    def run_shard(self, root: str, gen: str, shard: int) -> dict[str, Any]:
        marker = store_ops.run_shard(root, gen, shard, self.worker.engine, self.sync, reuse_previous=True)
        return marker.model_dump(mode="json")  # the marker's JSON crosses Modal's wire, as its file holds it

    @modal.method()
    def calibrate(self, root: str, gen: str) -> dict[str, Any] | None:
        calibration = store_ops.calibrate_store(root, gen, self.worker.engine, self.sync)
        return None if calibration is None else calibration.to_json()  # plain JSON crosses Modal's wire

    @modal.exit()
    def unload(self) -> None:
        self.worker.close()


@app.local_entrypoint()
def main(n: int = 2048, model_id: str = DEFAULT_MODEL) -> None:
    """Smoke test: `modal run modal_workers/torch_app.py --n 2048`."""
    texts = [f"Sentence number {i} about the history of a small town." for i in range(n)]
    worker = Torch(model_id=model_id)
    print(worker.describe.remote())
    start = time.perf_counter()
    vectors = worker.embed.remote(texts)
    print(f"{len(vectors)} vectors of dim {vectors.shape[1]} in {time.perf_counter() - start:.1f}s")
