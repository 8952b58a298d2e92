"""Modal app `wikiembed-tei`: Hugging Face Text Embeddings Inference (TEI) on GPUs, called as `TEI.embed`.

What it may touch: on Modal, the container's GPU, the `wikiembed-hf-cache`
Volume (model weights, shared with the PyTorch app) and the `huggingface`
secret; wherever it runs, one `text-embeddings-router` subprocess and a
loopback port. The router is started from `@modal.enter()`, and our own TEI
client (`wikiembed/backends/tei.py`) talks to it, so a container obeys
TEI's limits exactly as `--backend tei` does.

Deploy (the GPU type is read at import, when Modal evaluates the decorators):

    modal secret create huggingface HF_TOKEN=hf_...
    WIKIEMBED_GPU=A10G modal deploy modal_workers/tei_app.py

Then `--backend modal --modal-class TEI` (see `wikiembed/backends/modal_client.py`),
or try it: `modal run modal_workers/tei_app.py`.

Tests run this same code in-process with the router command pointed at a
stand-in (`WIKIEMBED_TEI_ROUTER`), so spawn, health wait, crash reporting and
shutdown are the real ones.
"""

# No `from __future__ import annotations` here: Modal reads the `model_id: str` parameter's type at
# decoration time and needs the real type, not a string.
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from typing import IO, Any, Sequence

import httpx
import modal
import numpy as np

from wikiembed import store_ops
from wikiembed.backends.tei import TEIBackend
from wikiembed.backends.modal_client import APP_NAMES
from wikiembed.errors import BackendError, InputError
from wikiembed.model import DEFAULT_MODEL
from wikiembed.volume_store import STORE_MOUNT, VolumeSync

from modal_workers.common import (
    CACHE_DIR, CACHE_VOLUME, EMBED_RETRIES, EMBED_TIMEOUT_S, FLOW_RETRIES, MAX_CONTAINERS, PYTHON_VERSION,
    SCALEDOWN_WINDOW_S, SHARD_CONCURRENT_INPUTS, STORE_VOLUME, gpu_type, packages,
)

# ---------------------------------------------------------------------------
# Knobs: every tunable, once, with its reason
# ---------------------------------------------------------------------------

APP_NAME = APP_NAMES["TEI"]

# GPU type. Modal evaluates decorators at import, so it comes from the environment at deploy time:
# `WIKIEMBED_GPU=H100 modal deploy modal_workers/tei_app.py`. A10G is the cheapest GPU on which
# TEI's flash-attention kernels run (sm86), and what Modal's English-Wikipedia embedding example used.
GPU = gpu_type("A10G")

# TEI ships one image per GPU architecture; a container on another architecture fails to start.
TEI_VERSION = "1.9"
_ARCH_TAGS = {  # Modal GPU name -> TEI image tag prefix ("" = the plain Ampere-80 tag)
    "T4": "turing",
    "A10G": "86",
    "A10": "86",
    "L4": "89",
    "L40S": "89",
    "A100": "",
    "A100-40GB": "",
    "A100-80GB": "",
    "H100": "hopper",
    "H200": "hopper",
}


def tei_image_tag(gpu: str, version: str = TEI_VERSION) -> str:
    """TEI's image tag for a Modal GPU spec: A10G -> 86-1.9, L4/L40S -> 89-1.9, H100 -> hopper-1.9, A100 -> 1.9."""
    kind = gpu.split(":")[0].rstrip("!").upper()
    if kind not in _ARCH_TAGS:
        raise InputError(
            f"GPU {gpu!r} (WIKIEMBED_GPU) has no TEI image; use one of {', '.join(_ARCH_TAGS)}."
        )
    prefix = _ARCH_TAGS[kind]
    return f"{prefix}-{version}" if prefix else version


TEI_IMAGE = f"ghcr.io/huggingface/text-embeddings-inference:{tei_image_tag(GPU)}"

# Inputs (remote `embed` calls) one container works on at once. TEI batches across requests by
# itself, so several calls in flight keep its queue full while the next call's texts travel.
CONCURRENT_INPUTS = 8
# What `describe` reports, so a client sizes its concurrency from what was deployed.
CAPACITY = {"max_containers": MAX_CONTAINERS, "concurrent_inputs": CONCURRENT_INPUTS}

# Modal re-runs an input whose container died (preemption, OOM); the per-input limit.
RETRIES = EMBED_RETRIES
TIMEOUT_S = EMBED_TIMEOUT_S
# The router's own startup deadline (the first start downloads the weights).
ROUTER_STARTUP_S = 600

# CPU cores per container: TEI tokenizes on the CPU, and tokenization must keep up with the GPU.
CPU = 4.0

# Router batch knobs (text-embeddings-router flags):
# - inputs per HTTP request: bigger means fewer requests; TEI re-batches by tokens anyway.
MAX_CLIENT_BATCH_SIZE = 128
# - requests our client keeps in flight to the router (shared by all concurrent inputs).
CLIENT_IN_FLIGHT = 16
# - permits: since TEI 1.9 every input takes one and a request short of permits gets 429 at once,
#   so this is sized for all the inputs our client keeps in flight, twice over.
MAX_CONCURRENT_REQUESTS = 2 * CLIENT_IN_FLIGHT * MAX_CLIENT_BATCH_SIZE
# - tokens per GPU batch: the GPU's work unit; 32k suits a small model on a 24 GB A10G.
MAX_BATCH_TOKENS = 32768
# - request body limit: 128 long chunks with JSON escapes fit well under 16 MB (TEI's default: 2 MB).
PAYLOAD_LIMIT = 16_000_000
# - off on purpose: our chunker keeps chunks within the model's max tokens, so a too-long input is
#   a bug we want to hear about (TEI answers 413), not a silently shortened vector.
AUTO_TRUNCATE = False

# Whole shards (`TEIShards`): one shard per container at a time (`SHARD_CONCURRENT_INPUTS`).
# Shard containers chunk on the CPU (the token chunker) while TEI embeds: more cores than `embed`.
SHARD_CPU = 8.0
# Errors a shard raises are retried by the flow's embed task (Prefect), never here as well.
SHARD_RETRIES = FLOW_RETRIES

# Model weights (`CACHE_VOLUME` at `CACHE_DIR`), where the router caches them.
VOLUME_NAME = CACHE_VOLUME
HUB_CACHE = f"{CACHE_DIR}/hub"  # the huggingface_hub cache layout, shared with the PyTorch app

# The router command; tests point it at a stand-in (`python tests/standins/fake_router`).
ROUTER_ENV = "WIKIEMBED_TEI_ROUTER"
ROUTER_COMMAND = "text-embeddings-router"


# ---------------------------------------------------------------------------
# The router: a plain class, so tests run it without Modal
# ---------------------------------------------------------------------------


def router_args(model_id: str, port: int, hub_cache: str | None = HUB_CACHE) -> list[str]:
    """text-embeddings-router flags from the knobs above."""
    args = [
        "--model-id", model_id,
        "--hostname", "127.0.0.1",
        "--port", str(port),
        "--max-client-batch-size", str(MAX_CLIENT_BATCH_SIZE),
        "--max-batch-tokens", str(MAX_BATCH_TOKENS),
        "--max-concurrent-requests", str(MAX_CONCURRENT_REQUESTS),
        "--payload-limit", str(PAYLOAD_LIMIT),
    ]  # fmt: skip
    if hub_cache:
        args += ["--huggingface-hub-cache", hub_cache]
    if AUTO_TRUNCATE:
        args.append("--auto-truncate")
    return args


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TEIRouter:
    """One `text-embeddings-router` process, its health, its logs, and the client that talks to it."""

    def __init__(
        self,
        model_id: str = DEFAULT_MODEL,
        *,
        command: Sequence[str] | None = None,
        hub_cache: str | None = HUB_CACHE,
        startup_s: float = ROUTER_STARTUP_S,
    ) -> None:
        self.model_id = model_id
        self.command = list(command) if command else shlex.split(os.environ.get(ROUTER_ENV, ROUTER_COMMAND))
        self.hub_cache = hub_cache
        self.startup_s = startup_s
        self.proc: subprocess.Popen[str] | None = None
        self.client: TEIBackend | None = None
        self.url = ""
        self._stderr: deque[str] = deque(maxlen=40)
        self._stdout: deque[str] = deque(maxlen=10)
        self._pumps: list[threading.Thread] = []

    def start(self) -> None:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = dict(os.environ)
        if "HF_TOKEN" in env:  # the secret's name; TEI versions read HF_TOKEN or HF_API_TOKEN
            env.setdefault("HF_API_TOKEN", env["HF_TOKEN"])
        try:
            self.proc = subprocess.Popen(
                [*self.command, *router_args(self.model_id, port, self.hub_cache)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                env=env,
                start_new_session=True,  # stop() signals the router's whole process group
            )
        except OSError as exc:
            raise BackendError(
                f"cannot start {self.command[0]!r} ({exc}); the TEI image provides text-embeddings-router, "
                f"or set {ROUTER_ENV} to its path."
            ) from exc
        # Forward the router's logs to ours (Modal shows them) and keep the tail for error messages.
        self._pumps = [
            threading.Thread(target=_pump, args=(self.proc.stdout, sys.stdout, self._stdout), daemon=True),
            threading.Thread(target=_pump, args=(self.proc.stderr, sys.stderr, self._stderr), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()
        try:
            self._wait_healthy()
            self.client = TEIBackend(
                [self.url],
                model_id=self.model_id,
                max_in_flight=CLIENT_IN_FLIGHT,
                timeout_s=TIMEOUT_S / 2,
                payload_limit=PAYLOAD_LIMIT,
            )
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_s
        while True:
            code = self.proc.poll()
            if code is not None:
                self._join_pumps()
                raise BackendError(
                    f"text-embeddings-router exited with code {code} before it was healthy "
                    f"(model {self.model_id!r}). Its stderr:\n{self.logs()}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                self._kill()
                self._join_pumps()
                raise BackendError(
                    f"text-embeddings-router was not healthy within {self.startup_s:g}s "
                    f"(model {self.model_id!r}). Its last output:\n{self.logs()}"
                )
            time.sleep(0.2)

    def logs(self) -> str:
        """The router's recent stderr (or stdout, where stderr is empty)."""
        lines = list(self._stderr) or list(self._stdout)
        return "".join(lines).rstrip() or "(no output)"

    def embed(self, texts: list[str], prompt: str = "") -> np.ndarray:
        if self.client is None:
            raise BackendError("the TEI router is not running; start() it first.")
        return self.client.embed(texts, prompt)

    def describe(self) -> dict[str, Any]:
        if self.client is None:
            raise BackendError("the TEI router is not running; start() it first.")
        return {"model_id": self.client.model_id, "dim": self.client.dim, "max_tokens": self.client.max_tokens,
                "kind": self.client.kind.as_dict()}

    def stop(self, grace_s: float = 10.0) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._kill()
        self._join_pumps()

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def _join_pumps(self) -> None:
        for pump in self._pumps:
            pump.join(timeout=5)


def _pump(src: IO[str] | None, dst: IO[str], tail: deque[str]) -> None:
    if src is None:
        return
    for line in src:
        tail.append(line)
        dst.write(line)
        dst.flush()  # line by line, so Modal's log view follows the router live
    src.close()


def gpu_arch_prefix(device_name: str) -> str | None:
    """TEI tag prefix for an nvidia-smi device name ("NVIDIA A10G" -> "86"), None if unknown."""
    name = device_name.upper()
    for marker, prefix in (("H100", "hopper"), ("H200", "hopper"), ("L40", "89"), ("L4", "89"),
                           ("A100", ""), ("A10", "86"), ("T4", "turing")):  # fmt: skip
        if marker in name:
            return prefix
    return None


def check_gpu_matches_image(gpu: str = GPU) -> None:
    """Fail early, and clearly, when the container's GPU is not the architecture the image was built for."""
    if shutil.which("nvidia-smi") is None:
        return
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, check=False
    )
    name = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
    expected = tei_image_tag(gpu).removesuffix(TEI_VERSION).rstrip("-")
    actual = gpu_arch_prefix(name)
    if actual is not None and actual != expected:
        raise BackendError(
            f"this container runs on {name!r} but the TEI image {TEI_IMAGE} was built for {gpu}; "
            f"redeploy with WIKIEMBED_GPU=<that GPU> modal deploy modal_workers/tei_app.py, "
            f"or call it without a --gpu override."
        )


# ---------------------------------------------------------------------------
# Modal: image, volume, the class
# ---------------------------------------------------------------------------

app = modal.App(APP_NAME)

cache_volume = modal.Volume.from_name(VOLUME_NAME, create_if_missing=True)
store_volume = modal.Volume.from_name(STORE_VOLUME, create_if_missing=True)

image = (
    modal.Image.from_registry(TEI_IMAGE, add_python=PYTHON_VERSION)
    .entrypoint([])  # the image's entrypoint is the router itself; we start it from @modal.enter
    # httpx/numpy/orjson for the TEI client; pyarrow/tokenizers/huggingface_hub for whole shards
    # (the snapshot is read, chunked with the model's tokenizer and checkpointed in the container).
    .pip_install(*packages("httpx", "orjson", "blingfire"))
    # The container imports this module again: give it the deploy-time knobs, so GPU and TEI_IMAGE
    # there are the ones the app was deployed with (the GPU check in `start` relies on it).
    .env({"WIKIEMBED_GPU": GPU, "WIKIEMBED_MAX_CONTAINERS": str(MAX_CONTAINERS), "HF_HOME": CACHE_DIR,
          "WIKIEMBED_STORE_VOLUME": STORE_VOLUME})
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
    startup_timeout=ROUTER_STARTUP_S + 60,
)
@modal.concurrent(max_inputs=CONCURRENT_INPUTS)
class TEI:
    # One container pool per model: `Cls.from_name(APP_NAME, "TEI")(model_id=...)`.
    model_id: str = modal.parameter(default=DEFAULT_MODEL)

    @modal.enter()
    def start(self) -> None:
        if not modal.is_local():
            check_gpu_matches_image()
        self.router = TEIRouter(self.model_id)
        self.router.start()
        if not modal.is_local():
            cache_volume.commit()  # keep the weights the first container downloaded

    @modal.method()
    def embed(self, texts: list[str], prompt: str = "") -> np.ndarray:
        """float32 `[len(texts), dim]` of `prompt + text` each, L2-normalized, in order."""
        return self.router.embed(texts, prompt)

    @modal.method()
    def describe(self) -> dict[str, Any]:
        """What this container serves: model_id, dim, max_tokens, the kind of vectors (TEI's /info), plus the GPU and image."""
        return {**self.router.describe(), "gpu": GPU, "image": TEI_IMAGE, **CAPACITY}

    @modal.exit()
    def stop(self) -> None:
        self.router.stop()


@app.cls(
    gpu=GPU,
    image=image,
    cpu=SHARD_CPU,
    volumes={CACHE_DIR: cache_volume, STORE_MOUNT: store_volume},
    secrets=[modal.Secret.from_name("huggingface")],
    max_containers=MAX_CONTAINERS,
    scaledown_window=SCALEDOWN_WINDOW_S,
    retries=SHARD_RETRIES,
    timeout=TIMEOUT_S,
    startup_timeout=ROUTER_STARTUP_S + 60,
)
@modal.concurrent(max_inputs=SHARD_CONCURRENT_INPUTS)
class TEIShards:
    """Whole shards: a store reference in, the shard's marker out (see `wikiembed.store_ops.run_shard`)."""

    model_id: str = modal.parameter(default=DEFAULT_MODEL)

    @modal.enter()
    def start(self) -> None:
        if not modal.is_local():
            check_gpu_matches_image()
        self.router = TEIRouter(self.model_id)
        self.router.start()
        self.sync = VolumeSync(store_volume)

    @modal.method()
    def run_shard(self, root: str, gen: str, shard: int) -> dict[str, Any]:
        assert self.router.client is not None
        marker = store_ops.run_shard(root, gen, shard, self.router.client, self.sync, reuse_previous=True)
        return marker.model_dump(mode="json")  # the marker's JSON crosses Modal's wire, as its file holds it

    @modal.method()
    def calibrate(self, root: str, gen: str) -> dict[str, Any] | None:
        assert self.router.client is not None
        calibration = store_ops.calibrate_store(root, gen, self.router.client, self.sync)
        return None if calibration is None else calibration.to_json()  # plain JSON crosses Modal's wire

    @modal.exit()
    def stop(self) -> None:
        self.router.stop()


@app.local_entrypoint()
def main(n: int = 2048, model_id: str = DEFAULT_MODEL) -> None:
    """Smoke test: `modal run modal_workers/tei_app.py --n 2048`."""
    texts = [f"Sentence number {i} about the history of a small town." for i in range(n)]
    tei = TEI(model_id=model_id)
    print(tei.describe.remote())
    start = time.perf_counter()
    vectors = tei.embed.remote(texts)
    print(f"{len(vectors)} vectors of dim {vectors.shape[1]} in {time.perf_counter() - start:.1f}s")
