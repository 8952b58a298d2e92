"""The device check: the whole local path's speed on one GPU machine, in one run of at most 6 minutes.

Needs this repository (run from a plain copy: it puts the repository on the import path),
torch, transformers, sentence-transformers, tokenizers, numpy and pyarrow (what the GPU machine
has), and the packages in `CARRIED`, which the GPU machine lacks and wikiembed imports (its records
and markers are pydantic models, its store reads markers with orjson): they travel as wheels. Here,
in the repository's root (the device tool sends `.whl` when `carry` names it):

    python bench/device_check.py --carry-command     # prints the `pip download` that fills .whl/

and on the GPU machine, before the check:
`python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site`.
Nothing comes from the network and no bundled model package is needed. A missing carried package
stops the check at once, naming it (exit 2), before any model loads.

    python bench/device_check.py MODEL_DIR OUT_DIR            # on the GPU
    python bench/device_check.py MODEL_DIR OUT_DIR --quick    # a few chunks, any device: checks the script

The test suite runs `--quick --device cpu` from a plain copy of the repository with only the GPU
machine's packages and `CARRIED` importable (tests/bench/test_smoke.py), so a check that would
crash there fails here first.

MODEL_DIR is an all-MiniLM-L6-v2 folder, e.g. the 43 MiB fp16 copy that
`python bench/engine.py --export-minilm build/minilm-fp16` writes. Its tokenizer (BERT uncased)
also serves the bge-small-en-v1.5 shape, built here with seeded random weights.

Text: the built-in sample (`wikiembed.sample`, calibrated to Wikipedia's ~121 tokens per
512-character window), as whole articles in a parquet file and as their first 512-character
windows. Measured in one process, one run, on the same text:

- tokenizer_chars_per_s: `tokenizers` `encode_batch` of the windows on all cores (the limit of one box);
- fast_tokenizer_chars_per_s: the same windows through `wikiembed.tokenizing.encode_ids` on one worker
  process per core, as the engine tokenizes, with the fast path (`wikiembed.fast_tokenizer`:
  blingfire where it gives exactly the ids of tokenizers) and, beside it, with tokenizers only
  (fast_tokenizer_reference_chars_per_s); fast_tokenizer_identical_ids says whether both gave the
  same ids. blingfire is optional here (`pip install --no-deps blingfire-0.1.8-py3-none-any.whl`
  copies it to a GPU machine): without it `fast_tokenizer` says so and these rates are left out;
- engine_chars_per_s / engine_ids_chars_per_s: `TorchEngine.embed(windows)` (tokenizing included)
  and `embed_ids` (the token chunker's ids), per model shape, best of the repeats;
- st_fp32_chars_per_s: `SentenceTransformer(...).encode(windows)`, fp32, batch 32 (what most users run);
- min_cosine: the engine against sentence-transformers fp32 on MiniLM's real weights;
- shapes: beyond BERT, the engine (its device's default dtype: bf16 on CUDA) against
  sentence-transformers fp32 `encode_document` / `encode_query` by cosine (min_cosine_documents,
  min_cosine_queries) and its rate: `decoder`, the Qwen3-Embedding shape (seeded random weights;
  Qwen3-Embedding-0.6B's layers in a full run, a tiny one with --quick: left padding, last-token
  pooling, EOS, an instruction as query prompt), and `prompts`, MiniLM's real weights with E5's
  document / query prompts left out of pooling (the INSTRUCTOR way);
- e2e_chars_per_s: article characters per second from the parquet of whole articles to a finished
  store (snapshot, plan, every shard chunked and embedded with its marker), through the plain
  functions `wikiembed run --device cuda` calls, two shards in flight as its local flow runs them.

Writes OUT_DIR/<date>-<device>.json after every step, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

# --- knobs -------------------------------------------------------------------------

# Full run: ~20M characters either way, the size of the speed anchors (40,000 windows). Quick: few,
# but enough articles for several shards in the end-to-end part.
CHUNKS = {"full": 40_000, "quick": 12}
ARTICLE_CHARS = {"full": 20_000_000, "quick": 8_000}
# Articles per shard in the end-to-end part: several shards, so chunking one overlaps embedding another.
SHARD_ROWS = {"full": 2_000, "quick": 4}
# The shapes beyond BERT: windows embedded (the fp32 reference of a 0.6B decoder is the slow side).
SHAPE_CHUNKS = {"full": 2_048, "quick": 8}
DECODER_SHAPE = {"full": "0.6b", "quick": "tiny"}
# Shards in flight at once, as the local flow runs them (one chunking while another embeds).
SHARDS_IN_FLIGHT = 2
REPEATS = {"full": 2, "quick": 1}
# Past this many seconds, steps not yet started are skipped (a full run must end within 6 minutes;
# a quick run checks every step).
BUDGET_S = {"full": 300, "quick": float("inf")}
WINDOW_CHARS = 512

# Distributions wikiembed imports that the GPU machine lacks (tests/bench/gpu_machine_packages.txt):
# they travel as wheels; (distribution, module) pairs.
CARRIED = (("pydantic", "pydantic"), ("pydantic-core", "pydantic_core"), ("annotated-types", "annotated_types"),
           ("typing-inspection", "typing_inspection"), ("orjson", "orjson"))  # fmt: skip


def carry_command() -> str:
    """The `pip download` of CARRIED's wheels for the GPU machine (Python 3.12, x86-64 Linux), at the
    versions installed here, into .whl/ (blingfire too, where installed: the fast tokenizer's)."""
    from importlib import metadata

    pinned = []
    for dist in [name for name, _ in CARRIED] + ["blingfire"]:
        try:
            pinned.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            if dist != "blingfire":
                pinned.append(dist)
    platforms = " ".join(f"--platform {p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"))
    return (f"python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp {platforms} "
            f"-d .whl {' '.join(pinned)}")  # fmt: skip


def missing_carried() -> list[str]:
    return [dist for dist, module in CARRIED if importlib.util.find_spec(module) is None]


def _bench_engine() -> Any:
    """bench/engine.py, for its model builders and cosine (loaded by path: bench/ is no package)."""
    spec = importlib.util.spec_from_file_location("wikiembed_bench_engine", ROOT / "bench" / "engine.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def sample_articles(chars: int) -> list[dict[str, str]]:
    """Sample articles, in order, until they hold at least `chars` characters."""
    from wikiembed.sample import generate_articles

    out, total = [], 0
    for article in generate_articles(sys.maxsize):
        out.append(article)
        total += len(article["text"])
        if total >= chars:
            return out
    return out


def windows(articles: list[dict[str, str]], n: int) -> list[str]:
    """The first `n` non-blank 512-character windows of the articles."""
    out: list[str] = []
    for article in articles:
        text = article["text"]
        out += [w for w in (text[i : i + WINDOW_CHARS].strip() for i in range(0, len(text), WINDOW_CHARS)) if w]
        if len(out) >= n:
            break
    return out[:n]


def best_time(run: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = run()
        sync()
        best = min(best, time.perf_counter() - start)
    return best, out


def device_slug(device: str) -> str:
    import torch

    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# --- end to end ----------------------------------------------------------------------


def prepare_store(articles_path: Path, store_dir: Path, model: str, device: str, shard_rows: int) -> tuple[Any, Any]:
    """Snapshot, plan and manifest, as `wikiembed run` makes them."""
    from wikiembed.plan import prepare
    from wikiembed.settings import RunSettings

    prepared = prepare(RunSettings(source=str(articles_path), store=str(store_dir), model=model, device=device, shard_rows=shard_rows))
    return prepared.store, prepared.manifest


def end_to_end(articles_path: Path, store_dir: Path, model: str, device: str, shard_rows: int) -> dict[str, Any]:
    """Parquet of whole articles -> finished store, timed; the engine is loaded (and warm) before the clock starts."""
    from wikiembed.backends.factory import open_backend
    from wikiembed.embedding import embed_shard
    from wikiembed.chunking import chunk_shard

    backend = open_backend("local", model, device=device)  # what `wikiembed run` opens: one shared engine
    backend.embed(["warm up the engine and its tokenizing workers"] * 64)
    chars = int(pc.sum(pc.utf8_length(pq.read_table(articles_path, columns=["text"]).column("text"))).as_py())
    start = time.perf_counter()
    store, manifest = prepare_store(articles_path, store_dir, model, device, shard_rows)
    planned = time.perf_counter()

    def one_shard(k: int) -> Any:
        first, last = manifest.plan.shards[k]
        chunk_shard(store, k, manifest)
        return embed_shard(store, k, backend, last - first)

    with ThreadPoolExecutor(max_workers=SHARDS_IN_FLIGHT) as pool:
        markers = list(pool.map(one_shard, range(len(manifest.plan.shards))))
    seconds = time.perf_counter() - start
    assert all(store.read_done(m.shard) == m for m in markers)
    return {
        "e2e_chars": chars,
        "e2e_articles": manifest.plan.rows,
        "e2e_shards": len(markers),
        "e2e_chunks": sum(m.chunks for m in markers),
        "e2e_seconds": round(seconds, 3),
        "e2e_plan_seconds": round(planned - start, 3),
        "e2e_chars_per_s": round(chars / seconds, 1),
    }


# --- shapes beyond BERT ---------------------------------------------------------------


def shape_parity(
    bench: Any, path: Path, chunks: list[str], queries: list[str], device: str, repeats: int, sync: Callable[[], None]
) -> dict[str, Any]:
    """The engine on the model's document and query prompts against sentence-transformers fp32's
    `encode_document` / `encode_query`, by cosine; and the engine's rate on the documents."""
    import torch
    from sentence_transformers import SentenceTransformer

    from wikiembed.backends.engine import TorchEngine
    from wikiembed.model import model_info

    info = model_info(str(path))
    document, query = info.prompt(None, "document"), info.prompt(None, "query")
    engine = TorchEngine(str(path), device=device)
    engine.embed(chunks[:256], prompt=document)
    seconds, documents = best_time(lambda: engine.embed(chunks, prompt=document), repeats, sync)
    asked = engine.embed(queries, prompt=query)
    out: dict[str, Any] = {
        "model_shape": f"{'decoder' if info.decoder else 'encoder'}, {info.pooling} pooling, padded {info.padding_side}"
                       + ("" if info.include_prompt else ", prompt left out of pooling"),
        "dtype": engine.dtype, "document_prompt": document, "query_prompt": query,
        "chunks": len(chunks), "queries": len(queries),
        "engine_chars_per_s": round(sum(map(len, chunks)) / seconds, 1),
    }  # fmt: skip
    engine.close()
    st = SentenceTransformer(str(path), device=device).to(torch.float32)
    options = {"batch_size": bench.ST_BATCH, "show_progress_bar": False, "convert_to_numpy": True}
    out["min_cosine_documents"] = round(bench.min_cosine(documents, st.encode_document(chunks, **options)), 6)
    out["min_cosine_queries"] = round(bench.min_cosine(asked, st.encode_query(queries, **options)), 6)
    del st
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


# --- the check -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, nargs="?", help="an all-MiniLM-L6-v2 folder (e.g. its fp16 copy)")
    parser.add_argument("out_dir", type=Path, nargs="?", help="where <date>-<device>.json is written")
    parser.add_argument("--quick", action="store_true", help="a few chunks on whatever device there is: checks the script")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if torch sees a GPU")
    parser.add_argument("--carry-command", action="store_true", help="print the pip download of the wheels to carry, and exit")
    args = parser.parse_args(argv)
    if args.carry_command:
        print(carry_command())
        return 0
    if args.model_dir is None or args.out_dir is None:
        parser.error("MODEL_DIR and OUT_DIR are required")
    if missing := missing_carried():
        print(f"not installed here: {', '.join(missing)}; wikiembed needs them. Carry their wheels "
              "(`python bench/device_check.py --carry-command` on a machine with pip) and install them first.", file=sys.stderr)  # fmt: skip
        return 2
    started = time.perf_counter()

    import torch
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    from wikiembed.backends.engine import TorchEngine
    from wikiembed.model import model_info
    from wikiembed import fast_tokenizer
    from wikiembed.tokenizing import cores, encode_ids, encode_ids_part, run_parts, spec

    bench = _bench_engine()
    mode = "quick" if args.quick else "full"
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA GPU here", file=sys.stderr)
        return 2
    if device == "cpu" and not args.quick:
        print("no GPU here: pass --quick to check the script on the CPU", file=sys.stderr)
        return 2
    minilm = args.model_dir.resolve()
    if not (minilm / "config.json").exists() or not (minilm / "tokenizer.json").exists():
        print(f"{minilm}: not a model folder with config.json and tokenizer.json", file=sys.stderr)
        return 2
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    repeats = REPEATS[mode]
    out_path = args.out_dir / f"{dt.date.today().isoformat()}-{device_slug(device)}.json"
    result: dict[str, Any] = {
        "device": bench._device_name(device),
        "cores": cores(),
        "mode": mode,
        "date": dt.date.today().isoformat(),
        "command": " ".join(["python", "bench/device_check.py", *(argv if argv is not None else sys.argv[1:])]),
        "versions": bench._versions(),
        "text": "wikiembed.sample articles; engine and tokenizer on their first 512-character windows",
    }

    def write() -> None:
        result["seconds"] = round(time.perf_counter() - started, 1)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(out_path)
        print(json.dumps({k: v for k, v in result.items() if k != "versions"}, indent=1), flush=True)

    def over_budget(step: str) -> bool:
        if time.perf_counter() - started > BUDGET_S[mode]:
            result.setdefault("skipped", []).append(step)
            return True
        return False

    with tempfile.TemporaryDirectory(prefix="wikiembed-device-check-") as tmp_name:
        tmp = Path(tmp_name)
        articles = sample_articles(ARTICLE_CHARS[mode])
        articles_path = tmp / "articles.parquet"
        pq.write_table(pa.Table.from_pylist(articles), articles_path)
        chunks = windows(articles, CHUNKS[mode])
        chars = sum(map(len, chunks))
        bge = bench.build_random_bert_folder(tmp / "bge-small-shape", **bench.BGE_SMALL_SHAPE, tokenizer_from=str(minilm))
        models = {"minilm": minilm, "bge-small-shape": bge}

        tokenizer = Tokenizer.from_file(str(minilm / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=model_info(str(minilm)).max_tokens)
        tokenizer.encode_batch(chunks[:256])
        tok_s, encodings = best_time(lambda: tokenizer.encode_batch(chunks), repeats, lambda: None)
        tokens = sum(len(e.ids) for e in encodings)
        result.update(
            chunks=len(chunks), chars=chars, tokens_per_chunk=round(tokens / len(chunks), 1),
            tokenizer_chars_per_s=round(chars / tok_s, 1),
            engine_chars_per_s={}, engine_ids_chars_per_s={}, st_fp32_chars_per_s={}, engine_vs_tokenizer={},
            engine_settings={}, min_cosine_per_model={},
        )  # fmt: skip
        write()

        # The fast path beside tokenizers, both on one worker process per core (as the engine tokenizes).
        result["fast_tokenizer"] = fast_tokenizer.name(tokenizer, "auto")
        if result["fast_tokenizer"] == "blingfire":
            tokenizer_spec = spec(tokenizer)
            per_part = max(len(chunks) // (8 * cores()), 1)

            def on_workers(which: str) -> list:
                parts = [(tokenizer_spec, which, chunks[a : a + per_part]) for a in range(0, len(chunks), per_part)]
                return list(run_parts(encode_ids_part, parts))

            on_workers("auto")  # starts the worker processes
            fast_s, fast_parts = best_time(lambda: on_workers("auto"), repeats, lambda: None)
            ref_s, ref_parts = best_time(lambda: on_workers("tokenizers"), repeats, lambda: None)
            result.update(
                fast_tokenizer_chars_per_s=round(chars / fast_s, 1),
                fast_tokenizer_reference_chars_per_s=round(chars / ref_s, 1),
                fast_tokenizer_vs_tokenizer=round(tok_s / fast_s, 3),
                fast_tokenizer_identical_ids=all(
                    np.array_equal(f[0], r[0]) and np.array_equal(f[1], r[1]) for f, r in zip(fast_parts, ref_parts)
                ),
            )  # fmt: skip
        else:
            result["fast_tokenizer"] = "tokenizers only: blingfire is not installed or does not load here"
        write()

        for name, path in models.items():
            if over_budget(f"engine {name}"):
                continue
            engine = TorchEngine(str(path), device=device)
            engine.embed(chunks[:2048])  # starts the tokenizing workers (GPU), warms the kernels
            ids, offsets = encode_ids(engine._tokenizer, chunks)
            seconds, vectors = best_time(lambda: engine.embed(chunks), repeats, sync)
            ids_seconds, _ = best_time(lambda: engine.embed_ids(ids, offsets), repeats, sync)
            result["engine_chars_per_s"][name] = round(chars / seconds, 1)
            result["engine_ids_chars_per_s"][name] = round(chars / ids_seconds, 1)
            result["engine_vs_tokenizer"][name] = round(tok_s / seconds, 3)
            result["engine_settings"][name] = {"dtype": engine.dtype, "max_batch_tokens": engine.max_batch_tokens,
                                               "tokenize_workers": engine.tokenize_workers,
                                               "tokenizer": fast_tokenizer.name(engine._tokenizer)}  # fmt: skip
            engine.close()
            write()
            if over_budget(f"sentence-transformers {name}"):
                continue
            st = SentenceTransformer(str(path), device=device).to(torch.float32)
            st.encode(chunks[:256], batch_size=bench.ST_BATCH, show_progress_bar=False)
            st_seconds, reference = best_time(
                lambda: st.encode(chunks, batch_size=bench.ST_BATCH, normalize_embeddings=True, show_progress_bar=False),
                1, sync,
            )  # fmt: skip
            result["st_fp32_chars_per_s"][name] = round(chars / st_seconds, 1)
            result["min_cosine_per_model"][name] = round(bench.min_cosine(vectors, reference), 6)
            del st
            write()
        # Parity is judged on real weights; speed targets on the bge-small shape.
        result["min_cosine"] = result["min_cosine_per_model"].get("minilm")
        if "bge-small-shape" in result["st_fp32_chars_per_s"]:
            result["speedup_vs_st_fp32"] = round(
                result["engine_chars_per_s"]["bge-small-shape"] / result["st_fp32_chars_per_s"]["bge-small-shape"], 2
            )
        write()

        result["e2e"] = {}
        for name, path in models.items():
            if over_budget(f"e2e {name}"):
                continue
            result["e2e"][name] = end_to_end(articles_path, tmp / f"store-{name}", str(path), device, SHARD_ROWS[mode])
            result["e2e"][name]["e2e_vs_tokenizer"] = round(result["e2e"][name]["e2e_chars_per_s"] / result["tokenizer_chars_per_s"], 3)
            write()
        if result["e2e"]:
            head = result["e2e"].get("bge-small-shape") or result["e2e"]["minilm"]
            result["e2e_chars_per_s"] = head["e2e_chars_per_s"]
            result["e2e_model"] = "bge-small-shape" if "bge-small-shape" in result["e2e"] else "minilm"

        # After the figures above: a full run that ran out of time skips these first.
        result["shapes"] = {}
        shape_texts = windows(articles, SHAPE_CHUNKS[mode])
        queries = [article["title"] for article in articles[: len(shape_texts)]]
        shapes = {  # the cheap one first
            "prompts": lambda: bench.prompted_copy(minilm, tmp / "minilm-prompts", bench.E5_PROMPTS, include_prompt=False),
            "decoder": lambda: bench.build_random_decoder_folder(tmp / "decoder-shape", DECODER_SHAPE[mode]),
        }
        for name, build in shapes.items():
            if over_budget(f"shape {name}"):
                continue
            result["shapes"][name] = shape_parity(bench, build(), shape_texts, queries, device, repeats, sync)
            write()

    result["targets"] = {
        "engine_vs_tokenizer": ">= 0.85 for both shapes", "speedup_vs_st_fp32": ">= 10",
        "min_cosine": ">= 0.999", "e2e_chars_per_s": ">= 0.75 x tokenizer_chars_per_s",
    }  # fmt: skip
    write()
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
