"""Benchmark the PyTorch engine against sentence-transformers on the same chunks.

What it may touch: reads model folders (the bundled all-MiniLM-L6-v2, or a copy
given with --minilm; bge-small-en-v1.5 from --bge-small or the Hugging Face
cache) and `wikiembed.sample` for text; builds a bge-small-en-v1.5 shaped model
with seeded random weights in a temp folder when the real one is absent (and,
for bench/device_check.py, the Qwen3-Embedding shape and a prompted MiniLM);
writes only the JSON file named by --json. Loads models onto the device it is
told to use; nothing else.

Three ways to embed the same N chunks, each timed end to end (tokenization
included), in one process:

  (a) st_fp32_b32   SentenceTransformer(path).encode(chunks), fp32, batch 32 (the default)
  (b) st_fp16_b256  the same in fp16, batch 256 (on CPU fp16 is not a speed path:
                    st_fp32_b256 runs instead and st_fp16_* stays null)
  (c) engine        wikiembed.backends.engine.TorchEngine(path, device).embed(chunks)

and, with --compile, (c) again with torch.compile (its startup, compile included,
reported apart), after every eager number is written; with --also-bf16 on CPU,
(c) in bf16 too (an opt-in there: the CPU default is fp32). Each (c) vector is
compared with (a)'s by cosine. Repeats alternate the methods and keep each
method's best time: other work on the machine only ever slows a run down, so
the fastest repeat is the closest to its real speed.

Usage:
  python bench/engine.py --device cpu --chunks 512 --json bench/results/DATE-cpu.json
  python bench/engine.py --smoke --json out.json    # a few chunks, one repeat, any device: checks the script
  python bench/engine.py --device cuda --chunks 40000 --compile --json out.json
  python bench/engine.py --export-minilm build/minilm-fp16   # a <64 MiB copy for a GPU machine without the package
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a plain checkout (a GPU machine may have no editable install)
    sys.path.insert(0, str(ROOT))

from wikiembed.model import DEFAULT_MODEL, load_tokenizer, model_info, resolve_model_path  # noqa: E402
from wikiembed.sample import generate_articles  # noqa: E402

# --- knobs -------------------------------------------------------------------

# Chunk size in characters: the reference figures were measured on 512-character windows.
CHUNK_CHARS = 512

# What most users run: sentence-transformers' default batch size, in fp32.
ST_BATCH = 32
# The tuned sentence-transformers baseline of the reference figures.
ST_FAST_BATCH = 256

# Chunks each method embeds once, untimed, before timing: CUDA context, cuBLAS
# handles, allocator pools and lazy imports are paid here, not in the numbers.
WARMUP_CHUNKS = 256

# Chunks per run when --chunks is not given: the GPU anchor size, and what a
# 2-core CPU embeds in about ten seconds per method.
DEFAULT_CHUNKS = {"cuda": 40_000, "cpu": 512}
# --smoke: every method runs once, on a few chunks (seconds on 2 cores).
SMOKE_CHUNKS = 8

# The bge-small-en-v1.5 architecture (BertModel, 12 layers x 384, CLS pooling,
# normalized, 512 tokens, the BERT uncased vocabulary MiniLM also uses).
BGE_SMALL_SHAPE = {
    "num_hidden_layers": 12,
    "hidden_size": 384,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
    "pooling": "cls",
}
# Random weights are drawn from this seed, so every run builds the same model.
SEED = 0

# Qwen3-Embedding's shape: a decoder (Qwen3Model) whose byte-level BPE tokenizer appends EOS, padded
# on the left, last-token pooling, normalized, an instruction as its query prompt and none for
# documents. "0.6b" is Qwen3-Embedding-0.6B's layer stack (440M parameters without its 151k-token
# vocabulary; ours is a BPE of DECODER_VOCAB tokens trained on the sample); "tiny" runs in seconds
# on a CPU.
DECODER_SHAPES = {
    "0.6b": {"num_hidden_layers": 28, "hidden_size": 1024, "num_attention_heads": 16, "num_key_value_heads": 8,
             "head_dim": 128, "intermediate_size": 3072, "max_seq_length": 512},
    "tiny": {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 16, "intermediate_size": 128, "max_seq_length": 256},
}  # fmt: skip
DECODER_VOCAB = 1_200
DECODER_QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
# E5's prompts: the prompt path of an encoder (the document prompt goes before every chunk).
E5_PROMPTS = {"query": "query: ", "document": "passage: "}

MODEL_CHOICES = ("minilm", "bge-small-shape")
BGE_SMALL_ID = "BAAI/bge-small-en-v1.5"


# --- inputs --------------------------------------------------------------------


def make_chunks(n: int, seed: int = 0) -> list[str]:
    """The first `n` non-blank 512-character windows of the sample articles (an article's last window is shorter)."""
    chunks: list[str] = []
    for article in generate_articles(sys.maxsize, seed=seed):
        text = article["text"]
        for start in range(0, len(text), CHUNK_CHARS):
            window = text[start : start + CHUNK_CHARS].strip()
            if window:
                chunks.append(window)
                if len(chunks) == n:
                    return chunks
    return chunks


def build_random_bert_folder(
    dest: Path,
    *,
    num_hidden_layers: int,
    hidden_size: int,
    num_attention_heads: int,
    intermediate_size: int,
    max_position_embeddings: int = 512,
    pooling: str = "cls",
    normalize: bool = True,
    seed: int = SEED,
    tokenizer_from: str = DEFAULT_MODEL,
) -> Path:
    """A sentence-transformers model folder: a BertModel of this shape with seeded random weights.

    Pooling is "cls" or "mean", with or without a final Normalize. The
    tokenizer files come from `tokenizer_from` (BERT uncased, 30,522 tokens),
    so sentence-transformers and the engine load the very same folder.
    Returns `dest`.
    """
    import torch
    from transformers import BertConfig, BertModel

    source = Path(model_info(tokenizer_from).path)
    dest.mkdir(parents=True, exist_ok=True)
    config = BertConfig(
        vocab_size=load_tokenizer(tokenizer_from).get_vocab_size(),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    BertModel(config).eval().save_pretrained(dest)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy2(source / name, dest / name)
    _sentence_transformers_files(dest, hidden_size, pooling, max_position_embeddings, normalize=normalize)
    return dest


def build_random_decoder_folder(dest: Path, shape: str = "tiny", *, seed: int = SEED) -> Path:
    """A sentence-transformers folder of the Qwen3-Embedding shape (`DECODER_SHAPES[shape]`) with
    seeded random weights and a byte-level BPE trained on the built-in sample. Written as files
    (no sentence-transformers module classes), so any sentence-transformers 5+ loads it. Returns `dest`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    size = dict(DECODER_SHAPES[shape])
    max_seq_length = size.pop("max_seq_length")
    eos = "<|endoftext|>"
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=DECODER_VOCAB, special_tokens=[eos], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tokenizer.train_from_iterator((row["text"] for row in generate_articles(300, seed=seed)), trainer=trainer)
    eos_id = tokenizer.token_to_id(eos)
    tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, eos_id)])
    dest.mkdir(parents=True, exist_ok=True)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos, pad_token=eos, padding_side="left",
                            model_max_length=max_seq_length).save_pretrained(str(dest))  # fmt: skip
    config = Qwen3Config(vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=max_seq_length,
                         eos_token_id=eos_id, pad_token_id=eos_id, **size)  # fmt: skip
    torch.manual_seed(seed)
    Qwen3Model(config).eval().save_pretrained(str(dest))
    _sentence_transformers_files(dest, size["hidden_size"], "lasttoken", max_seq_length,
                                 prompts={"query": DECODER_QUERY_PROMPT, "document": ""})  # fmt: skip
    return dest


def prompted_copy(source: Path, dest: Path, prompts: dict[str, str], *, include_prompt: bool = True) -> Path:
    """`source` with document / query `prompts` and, with `include_prompt=False`, pooling that leaves
    the prompt's tokens out (as INSTRUCTOR does); the weights are linked, not copied. Returns `dest`."""
    modules = json.loads((source / "modules.json").read_text())
    pooling = next(m["path"] for m in modules if m["type"].endswith("Pooling"))
    dest.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name not in ("config_sentence_transformers.json", pooling):
            (dest / entry.name).symlink_to(entry.resolve())
    st_path = source / "config_sentence_transformers.json"
    st_config = json.loads(st_path.read_text()) if st_path.exists() else {}
    (dest / st_path.name).write_text(json.dumps({**st_config, "prompts": prompts, "default_prompt_name": None}))
    (dest / pooling).mkdir()
    pooling_config = json.loads((source / pooling / "config.json").read_text())
    (dest / pooling / "config.json").write_text(json.dumps({**pooling_config, "include_prompt": include_prompt}))
    return dest


def _sentence_transformers_files(dest: Path, hidden: int, pooling: str, max_seq_length: int, *,
                                 normalize: bool = True, prompts: dict[str, str] | None = None) -> None:
    """modules.json (Transformer, Pooling, Normalize) and the configs sentence-transformers reads."""
    (dest / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (dest / "2_Normalize").mkdir(exist_ok=True)
    (dest / "modules.json").write_text(json.dumps(modules))
    (dest / "1_Pooling").mkdir(exist_ok=True)
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
    flags = {f"pooling_mode_{mode}": mode.removesuffix("_token").removesuffix("_tokens") == pooling for mode in modes}
    (dest / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": hidden, **flags}))
    if prompts is not None:
        (dest / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts, "default_prompt_name": None}))


def export_minilm_fp16(dest: Path) -> Path:
    """Copy the bundled MiniLM with its weights rounded to fp16 (43 MiB: small enough to copy to a GPU machine).

    Both sentence-transformers and the engine then load the same rounded
    weights, so the cosine comparison stays exact in meaning.
    """
    from safetensors.torch import load_file, save_file

    source = resolve_model_path(DEFAULT_MODEL)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("model.safetensors", "*.md", ".gitattributes"))
    weights = load_file(str(source / "model.safetensors"))
    save_file({k: v.half().contiguous() for k, v in weights.items()}, str(dest / "model.safetensors"), {"format": "pt"})
    return dest


# --- timing ----------------------------------------------------------------------


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_best(runs: dict[str, Callable[[], np.ndarray]], repeats: int, device: str) -> tuple[dict, dict]:
    """Run each method `repeats` times, alternating; return ({name: [seconds...]}, {name: last output})."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            _sync(device)
            start = time.perf_counter()
            outputs[name] = run()
            _sync(device)
            seconds[name].append(time.perf_counter() - start)
            print(f"    {name}: {seconds[name][-1]:.2f} s", flush=True)
    return seconds, outputs


def _rates(seconds: list[float], chunks: int, tokens: int, chars: int) -> dict[str, Any]:
    best = min(seconds)
    return {
        "seconds": [round(s, 4) for s in seconds],
        "best_s": round(best, 4),
        "chunks_per_s": round(chunks / best, 1),
        "tokens_per_s": round(tokens / best, 1),
        "chars_per_s": round(chars / best, 1),
    }


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest per-row cosine similarity between two [n, dim] arrays."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min()) if len(cos) else 1.0


def _describe(name: str, path: Path, weights: str, chunks: Sequence[str]) -> tuple[dict[str, Any], int, int]:
    """The model's and the input's facts; returns (facts, tokens, chars)."""
    info = model_info(str(path))
    lengths = [min(len(e.ids), info.max_tokens) for e in load_tokenizer(str(path)).encode_batch(list(chunks))]
    tokens, chars = int(sum(lengths)), int(sum(map(len, chunks)))
    facts = {
        "model": name,
        "model_shape": _shape(path, info.pooling),
        "weights": weights,
        "chunks": len(chunks),
        "chars": chars,
        "tokens": tokens,
        "tokens_per_chunk_mean": round(tokens / max(len(chunks), 1), 1),
        "max_tokens": info.max_tokens,
    }
    return facts, tokens, chars


def bench_model(
    path: Path, chunks: Sequence[str], device: str, *, repeats: int, also_bf16: bool, result: dict[str, Any]
) -> np.ndarray:
    """Measure (a), (b) and (c) on one model, filling `result`; return (a)'s vectors, the reference."""
    import torch
    from sentence_transformers import SentenceTransformer

    from wikiembed.backends.engine import TorchEngine

    on_cuda = device.startswith("cuda")
    n, tokens, chars = result["chunks"], result["tokens"], result["chars"]
    warm = list(chunks[:WARMUP_CHUNKS])

    # sentence-transformers loads the checkpoint's own dtype under transformers 5:
    # set fp32 / fp16 explicitly so (a) and (b) are what they say.
    st32 = SentenceTransformer(str(path), device=device).to(torch.float32)
    fast_name, st_fast = "st_fp32_b256", st32
    if on_cuda:
        fast_name, st_fast = "st_fp16_b256", SentenceTransformer(str(path), device=device).to(torch.float16)
    engines = {"engine": TorchEngine(str(path), device=device)}
    if also_bf16 and not on_cuda:  # on CUDA bf16 is already the default
        engines["engine_bf16"] = TorchEngine(str(path), device=device, dtype="bf16")

    def st_run(model: Any, batch: int) -> Callable[[], np.ndarray]:
        return lambda: model.encode(
            list(chunks), batch_size=batch, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True
        )

    runs = {"st_fp32_b32": st_run(st32, ST_BATCH), fast_name: st_run(st_fast, ST_FAST_BATCH)}
    runs.update({key: (lambda e=e: e.embed(chunks)) for key, e in engines.items()})
    st32.encode(warm, batch_size=ST_BATCH, show_progress_bar=False)
    st_fast.encode(warm, batch_size=ST_FAST_BATCH, show_progress_bar=False)
    for e in engines.values():
        e.embed(warm)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds, outputs = _time_best(runs, repeats, device)
    methods = {key: _rates(secs, n, tokens, chars) for key, secs in seconds.items()}
    reference = outputs["st_fp32_b32"]
    engine = engines["engine"]
    result.update(
        methods=methods,
        engine_settings={"dtype": engine.dtype, "max_batch_tokens": engine.max_batch_tokens,
                         "torch_threads": torch.get_num_threads()},
        engine_chars_per_s=methods["engine"]["chars_per_s"],
        st_fp32_chars_per_s=methods["st_fp32_b32"]["chars_per_s"],
        st_fp16_chars_per_s=methods["st_fp16_b256"]["chars_per_s"] if on_cuda else None,
        speedup_vs_st_fp32=round(methods["st_fp32_b32"]["best_s"] / methods["engine"]["best_s"], 3),
        min_cosine=round(min_cosine(outputs["engine"], reference), 6),
        st_fast_min_cosine=round(min_cosine(outputs[fast_name], reference), 6),
    )
    if "engine_bf16" in outputs:
        result["engine_bf16_min_cosine"] = round(min_cosine(outputs["engine_bf16"], reference), 6)
        result["engine_bf16_note"] = "opt-in (dtype='bf16'); the CPU default is fp32"
    if on_cuda:
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    for e in engines.values():
        e.close()
    del st32, st_fast
    if on_cuda:
        torch.cuda.empty_cache()
    return reference


def bench_compiled(
    path: Path, chunks: Sequence[str], device: str, reference: np.ndarray, *, repeats: int, result: dict[str, Any]
) -> None:
    """Time the engine with torch.compile (startup, compile included, reported apart); record, never raise."""
    from wikiembed.backends.engine import TorchEngine

    try:
        start = time.perf_counter()
        compiled = TorchEngine(str(path), device=device, compile=True)
        result["engine_compiled_startup_s"] = round(time.perf_counter() - start, 1)
        secs, outs = _time_best({"engine_compiled": lambda: compiled.embed(chunks)}, repeats, device)
        rates = _rates(secs["engine_compiled"], result["chunks"], result["tokens"], result["chars"])
        result["methods"]["engine_compiled"] = rates
        result["engine_compiled_chars_per_s"] = rates["chars_per_s"]
        result["engine_compiled_min_cosine"] = round(min_cosine(outs["engine_compiled"], reference), 6)
        compiled.close()
    except Exception as exc:  # a failed compile must not lose the eager numbers
        result["engine_compiled_error"] = f"{type(exc).__name__}: {exc}"[:500]


def _bge_small(explicit: str | None, scratch: Path) -> tuple[Path, str]:
    """The real bge-small-en-v1.5 where it is at hand (a folder, or the offline Hub cache), else its shape."""
    from wikiembed.errors import InputError

    for candidate in (explicit, os.environ.get("WIKIEMBED_BGE_SMALL"), BGE_SMALL_ID):
        if candidate:
            try:
                return resolve_model_path(candidate), "real"
            except InputError:
                if candidate == explicit:
                    raise
    print("  building the bge-small shape with random weights ...", flush=True)
    return build_random_bert_folder(scratch, **BGE_SMALL_SHAPE), f"random (seed {SEED})"


def _shape(path: Path, pooling: str) -> str:
    config = json.loads((path / "config.json").read_text())
    return (
        f"{config.get('architectures', ['?'])[0]} {config['num_hidden_layers']} layers x {config['hidden_size']} "
        f"hidden, {config['num_attention_heads']} heads, {config['intermediate_size']} intermediate, {pooling} pooling"
    )


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu}, {torch.get_num_threads()} torch threads"


def _versions() -> dict[str, str]:
    import sentence_transformers
    import tokenizers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def _write(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def _headline(payload: dict[str, Any]) -> None:
    """Copy the headline model's numbers to the top level (the schema device checks read)."""
    models = payload["models"]
    if not models:
        return
    head = models.get("bge-small-shape") or next(iter(models.values()))
    for key in ("model_shape", "chunks", "engine_chars_per_s", "st_fp32_chars_per_s", "st_fp16_chars_per_s",
                "speedup_vs_st_fp32", "engine_compiled_chars_per_s"):
        if key in head:
            payload[key] = head[key]
    # Parity is judged on real weights where we have them (random weights say little about precision).
    judge = models.get("minilm") if "min_cosine" in models.get("minilm", {}) else head
    if "min_cosine" in judge:
        payload["min_cosine"] = judge["min_cosine"]
        payload["min_cosine_model"] = judge["model"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    parser.add_argument("--chunks", type=int, default=None, help=f"chunks to embed (default {DEFAULT_CHUNKS})")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--models", default=",".join(MODEL_CHOICES), help=f"comma-separated, of {MODEL_CHOICES}")
    parser.add_argument("--compile", action="store_true", help="also time the engine with torch.compile")
    parser.add_argument("--also-bf16", action="store_true", help="on CPU, also time the engine in bf16 (opt-in there)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per method (default: 1 cuda, 3 cpu)")
    parser.add_argument("--minilm", default=None, help="MiniLM folder (default: the bundled one; see --export-minilm)")
    parser.add_argument("--bge-small", default=None, help=f"a {BGE_SMALL_ID} folder (default: Hub cache, else random)")
    parser.add_argument("--export-minilm", type=Path, default=None, metavar="DEST",
                        help="write an fp16 copy of the bundled MiniLM to DEST and exit")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_CHUNKS} chunks, one repeat: checks the script")
    args = parser.parse_args(argv)
    if args.smoke:
        args.chunks, args.repeats = args.chunks or SMOKE_CHUNKS, args.repeats or 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.export_minilm:
        print(f"wrote {export_minilm_fp16(args.export_minilm)}")
        return 0

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA GPU here", file=sys.stderr)
        return 2
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(MODEL_CHOICES))
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {MODEL_CHOICES}")
    n = args.chunks or DEFAULT_CHUNKS[device]
    repeats = args.repeats or (1 if device == "cuda" else 3)

    chunks = make_chunks(n)
    payload: dict[str, Any] = {
        "device": _device_name(device),
        "date": dt.date.today().isoformat(),
        "model_shape": None,
        "chunks": len(chunks),
        "engine_chars_per_s": None,
        "st_fp32_chars_per_s": None,
        "st_fp16_chars_per_s": None,
        "min_cosine": None,
        "text": f"wikiembed.sample articles (seed 0) cut into {CHUNK_CHARS}-character windows",
        "repeats": repeats,
        "timing": "best of the repeats, methods alternating; tokenization included for every method",
        "command": " ".join(["python", "bench/engine.py", *(argv if argv is not None else sys.argv[1:])]),
        "versions": _versions(),
        "models": {},
    }
    if device == "cpu":
        payload["st_fp16_note"] = (
            f"skipped on CPU (fp16 is no CPU speed path); st_fp32_b{ST_FAST_BATCH} ran in its place"
        )
        if hasattr(os, "getloadavg"):
            payload["load_avg_before"] = [round(x, 2) for x in os.getloadavg()]

    with tempfile.TemporaryDirectory(prefix="wikiembed-bench-") as tmp:
        # Every eager number first (written as it arrives), then the compiled runs:
        # a slow or failing compile can't cost the numbers the check exists for.
        references: dict[str, tuple[Path, np.ndarray]] = {}
        for name in names:
            if name == "minilm":
                copy = args.minilm or os.environ.get("WIKIEMBED_MINILM")
                path = resolve_model_path(copy or DEFAULT_MODEL)
                weights = "real" + (" (fp16-rounded copy)" if copy else "")
            else:
                path, weights = _bge_small(args.bge_small, Path(tmp) / "bge-small-shape")
            print(f"{name}: {path} ({len(chunks)} chunks on {device})", flush=True)
            result, _, _ = _describe(name, path, weights, chunks)
            payload["models"][name] = result
            reference = bench_model(path, chunks, device, repeats=repeats, also_bf16=args.also_bf16, result=result)
            references[name] = (path, reference)
            _headline(payload)
            _write(args.json, payload)
            print(json.dumps({k: v for k, v in result.items() if k != "methods"}, indent=1), flush=True)
        if args.compile:
            for name, (path, reference) in references.items():
                print(f"{name}: torch.compile ...", flush=True)
                bench_compiled(path, chunks, device, reference, repeats=repeats, result=payload["models"][name])
                _headline(payload)
                _write(args.json, payload)
    if device == "cpu" and hasattr(os, "getloadavg"):
        payload["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    _write(args.json, payload)
    print(json.dumps({k: v for k, v in payload.items() if k != "models"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
