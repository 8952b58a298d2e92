"""Pipeline overhead on the CPU side: does everything around the model cost next to nothing?

Measures, in one run on this machine, and writes them as JSON:

- overhead_ratio: wall time of the `embed-dataset` flow on `sample:N` with the
  local backend (Prefect's start-up measured separately and excluded: a
  trivial flow starts the ephemeral API first) divided by the bare engine's
  time on the same chunks (same warm engine, texts read from the run's store).
  overhead_cpu_ratio is the same in CPU seconds of this process tree (the engine's
  CPU workers are single-threaded, so no spinning is counted): other load on a shared
  machine slows both sides' wall time unevenly, but barely moves their CPU time.
- rss_growth: peak RSS of the chunk-only path (download + shard + chunk, in
  a fresh subprocess) over 10x the articles, divided by that of the smaller run.
- chunking_vs_tokenizer: the token chunker's throughput (`chunk_table`, every
  core) divided by `tokenizers`' `encode_batch` (every core) on the same article texts.
- host_ceiling_chars_per_s: the engine's host side alone on 512-character
  chunks of the sample: `TorchEngine.embed` in its GPU shape (tokenizing worker
  processes, one launch loop, one batch at a time) with the forward pass and
  pooling replaced by a no-op that returns vectors of the right shape; against
  tokenizer_chars_per_s, a bare `encode_batch` of the same chunks on the same
  cores in the same run (host_ceiling_vs_tokenizer). host_ceiling_ids_chars_per_s
  is the same for `embed_ids` (the token chunker's ids: nothing to tokenize).
- resume_1000_shards_s: `wikiembed run` (a real CLI subprocess, Prefect start-up
  included) over a store whose 1,000 shards are all done (resume_shards, resume_s: the
  same for the shards of a smaller run).

    python bench/pipeline.py --quick --json bench/results/pipeline-quick.json

Quick mode (N=3,000) finishes in well under 15 minutes on 2 cores; full mode uses N=20,000.
`--smoke` runs every step on a few dozen articles (seconds: it checks the script, its figures
mean nothing); its CLI run uses the Prefect API of PREFECT_API_URL where that is set, the
others start their own as a user's would.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# On a loaded machine the ephemeral API can take longer than Prefect's 20 s default to start.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


# Articles and chunks per step, by mode.
SIZES = {
    "full": {"articles": 20_000, "chunking_articles": 5000, "rss_articles": 5000, "host_chunks": 40_000, "resume_shards": 1000, "chunking_repeats": 5, "host_repeats": 3},
    "quick": {"articles": 3000, "chunking_articles": 1000, "rss_articles": 2000, "host_chunks": 20_000, "resume_shards": 1000, "chunking_repeats": 5, "host_repeats": 3},
    "smoke": {"articles": 20, "chunking_articles": 20, "rss_articles": 10, "host_chunks": 100, "resume_shards": 4, "chunking_repeats": 1, "host_repeats": 1},
}  # fmt: skip


def _child_chunk_only(n: int, store: str) -> None:
    """Subprocess body for rss_growth: download + plan + chunk every shard, no Prefect, no model."""
    from wikiembed.plan import prepare
    from wikiembed.settings import RunSettings
    from wikiembed.chunking import chunk_shard

    prepared = prepare(RunSettings(source=f"sample:{n}", store=store, shard_rows=2000))
    for k in range(len(prepared.manifest.plan.shards)):
        chunk_shard(prepared.store, k, prepared.manifest)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def rss_growth(n_small: int, tmp: Path) -> dict:
    peaks = {}
    for n in (n_small, 10 * n_small):
        out = subprocess.run(
            [sys.executable, __file__, "--_child-chunk-only", str(n), str(tmp / f"rss-{n}")],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )
        peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    return {"rss_small_mb": peaks[n_small], "rss_large_mb": peaks[10 * n_small], "rss_articles": [n_small, 10 * n_small],
            "rss_growth": peaks[10 * n_small] / peaks[n_small]}


def chunking_vs_tokenizer(n: int, repeats: int = 5) -> dict:
    import pyarrow as pa

    from wikiembed.model import load_tokenizer
    from wikiembed.sample import generate_articles
    from wikiembed.chunking import Chunking, chunk_table

    tokenizer = load_tokenizer()
    table = pa.Table.from_pylist(list(generate_articles(n)))
    texts = table.column("text").to_pylist()
    chars = sum(len(t) for t in texts)
    tokenizer.encode_batch(texts[:200])  # warm both paths (the chunker's worker processes start here)
    chunk_table(table.slice(0, n // 2), Chunking("tokens", 256, 0), tokenizer)
    best_tok = best_chunk = float("inf")
    for _ in range(repeats):  # alternating, best of each: other load only ever slows a run down
        t0 = time.perf_counter()
        tokenizer.encode_batch(texts, add_special_tokens=False)
        best_tok = min(best_tok, time.perf_counter() - t0)
        t0 = time.perf_counter()
        chunk_table(table, Chunking("tokens", 256, 0), tokenizer)
        best_chunk = min(best_chunk, time.perf_counter() - t0)
    return {
        "chunking_tokenizer_chars_per_s": chars / best_tok,
        "chunker_chars_per_s": chars / best_chunk,
        "chunking_vs_tokenizer": best_tok / best_chunk,
    }


def sample_chunks(n: int, size: int = 512) -> list[str]:
    """The first `n` non-blank `size`-character windows of the sample articles."""
    from wikiembed.sample import generate_articles

    chunks: list[str] = []
    for article in generate_articles(sys.maxsize):
        text = article["text"]
        chunks += [w for w in (text[i : i + size].strip() for i in range(0, len(text), size)) if w]
        if len(chunks) >= n:
            return chunks[:n]
    return chunks


def host_ceiling(n_chunks: int, repeats: int = 3) -> dict:
    """The engine's host side with a no-op model, against a bare encode_batch of the same chunks."""
    import torch

    from wikiembed.backends.engine import MAX_BATCH_TOKENS, WINDOW_TEXTS, TorchEngine
    from wikiembed.tokenizing import cores, encode_ids

    chunks = sample_chunks(n_chunks)
    chars = sum(map(len, chunks))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one torch thread: the engine runs its GPU shape (one launch loop), not CPU workers
    try:
        engine = TorchEngine(device="cpu", tokenize_workers=cores(), max_batch_tokens=MAX_BATCH_TOKENS["cuda"])
    finally:
        torch.set_num_threads(threads)
    engine._window = WINDOW_TEXTS["cuda"]  # the GPU's window and token budget: the host work a GPU run has
    dim = engine.dim
    # The model's place, taken by a no-op of the right output shape: what remains is the host side.
    engine._pool_batch = lambda ids, mask, prompt_tokens=0: torch.zeros((ids.shape[0], dim))  # type: ignore[method-assign]
    tokenizer = engine._tokenizer  # the engine's own (truncating) tokenizer, so both tokenize the same way
    ids, offsets = encode_ids(tokenizer, chunks)
    engine.embed(chunks[:2000])  # start the worker processes
    best = {"tokenizer": float("inf"), "engine": float("inf"), "engine_ids": float("inf")}
    for _ in range(repeats):
        for name, run in (
            ("tokenizer", lambda: tokenizer.encode_batch(chunks)),
            ("engine", lambda: engine.embed(chunks)),
            ("engine_ids", lambda: engine.embed_ids(ids, offsets)),
        ):
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
    engine.close()
    return {
        "host_chunks": len(chunks),
        "host_tokens_per_chunk": round(len(ids) / len(chunks), 1),
        "tokenizer_chars_per_s": chars / best["tokenizer"],
        "host_ceiling_chars_per_s": chars / best["engine"],
        "host_ceiling_vs_tokenizer": best["tokenizer"] / best["engine"],
        "host_ceiling_ids_chars_per_s": chars / best["engine_ids"],
    }


def _tree_cpu_s() -> float:
    """CPU seconds of this process and of every process it started (Prefect's API server, tokenizing workers)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def overhead(n: int, tmp: Path) -> dict:
    import numpy as np
    import pyarrow.parquet as pq
    from prefect import flow

    from wikiembed.flows.embed_dataset import embed_dataset
    from wikiembed.backends.factory import open_backend

    @flow(name="bench-warmup")
    def warmup() -> int:
        return 1

    t0 = time.perf_counter()
    warmup()
    prefect_startup = time.perf_counter() - t0
    store = tmp / "overhead"
    cpu0, t0 = _tree_cpu_s(), time.perf_counter()
    summary = embed_dataset(source=f"sample:{n}", store=str(store))
    run_s, run_cpu = time.perf_counter() - t0, _tree_cpu_s() - cpu0
    assert summary["shards_failed"] == 0, summary
    texts = pq.read_table(store / "data", columns=["text"]).column("text").to_pylist()
    engine = open_backend("local", "sentence-transformers/all-MiniLM-L6-v2")  # the same warm engine the run used
    cpu0, t0 = _tree_cpu_s(), time.perf_counter()
    vectors = engine.embed(texts)
    engine_s, engine_cpu = time.perf_counter() - t0, _tree_cpu_s() - cpu0
    assert vectors.shape[0] == len(texts) and np.isfinite(vectors).all()
    return {
        "articles": n,
        "chunks": len(texts),
        "prefect_startup_s": prefect_startup,
        "run_s": run_s,
        "engine_s": engine_s,
        "overhead_ratio": run_s / engine_s,
        "run_cpu_s": run_cpu,
        "engine_cpu_s": engine_cpu,
        "overhead_cpu_ratio": run_cpu / engine_cpu,
    }


def resume_done_shards(tmp: Path, shards: int = 1000, own_api: bool = True) -> dict:
    """Build a real store of `shards` done shards (plain functions, no Prefect), then time a no-op CLI run."""
    from wikiembed.embedding import embed_shard
    from wikiembed.backends.factory import open_backend
    from wikiembed.plan import prepare
    from wikiembed.settings import RunSettings
    from wikiembed.chunking import chunk_shard

    store = tmp / "resume"
    settings = RunSettings(source=f"sample:{shards}", store=str(store), shard_rows=1)
    prepared = prepare(settings)
    backend = open_backend("local", settings.model)
    t0 = time.perf_counter()
    for k, (start, end) in enumerate(prepared.manifest.plan.shards):
        chunk_shard(prepared.store, k, prepared.manifest)
        embed_shard(prepared.store, k, backend, end - start)
    build_s = time.perf_counter() - t0
    cmd = [sys.executable, "-m", "wikiembed.flows.cli", "run", "--source", f"sample:{shards}", "--shard-rows", "1", "--store", str(store),
           "--summary-json", str(tmp / "resume.json")]
    env = {k: v for k, v in os.environ.items() if own_api is False or k != "PREFECT_API_URL"}  # its own ephemeral API, as a user gets
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, env=env)
    resume_s = time.perf_counter() - t0
    summary = json.loads((tmp / "resume.json").read_text())
    assert summary["shards_done"] == shards and summary["embedded_chunks"] == 0, summary
    return {"resume_build_s": build_s, "resume_shards": shards, "resume_s": resume_s,
            "resume_1000_shards_s": resume_s if shards == 1000 else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N=3,000 (about 10 minutes on 2 cores)")
    p.add_argument("--smoke", action="store_true", help="every step on a few dozen articles: checks the script in seconds")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--_child-chunk-only", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child_chunk_only:
        _child_chunk_only(int(args._child_chunk_only[0]), args._child_chunk_only[1])
        return
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    size = SIZES[mode]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wikiembed-bench-") as tmpdir:
        tmp = Path(tmpdir)
        results: dict = {"mode": mode, "date": time.strftime("%Y-%m-%d"),
                         "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                         "command": " ".join(["python", "bench/pipeline.py", *sys.argv[1:]])}
        results.update(chunking_vs_tokenizer(size["chunking_articles"], repeats=size["chunking_repeats"]))
        print(f"chunking_vs_tokenizer {results['chunking_vs_tokenizer']:.2f}", flush=True)
        # Before anything loads a model: a subprocess reports this process's peak RSS as its own
        # when that is higher (Linux counts the memory its exec replaces), so this runs while we are small.
        results.update(rss_growth(size["rss_articles"], tmp))
        print(f"rss_growth {results['rss_growth']:.2f}", flush=True)
        results.update(host_ceiling(size["host_chunks"], repeats=size["host_repeats"]))
        print(f"host_ceiling_vs_tokenizer {results['host_ceiling_vs_tokenizer']:.2f}", flush=True)
        results.update(overhead(size["articles"], tmp))
        print(f"overhead_ratio {results['overhead_ratio']:.3f}", flush=True)
        results.update(resume_done_shards(tmp, size["resume_shards"], own_api=mode != "smoke"))
        print(f"resume_s {results['resume_s']:.1f} ({results['resume_shards']} shards)", flush=True)
    results["bench_seconds"] = time.perf_counter() - started
    results["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]  # other work on a shared machine
    results["targets"] = {"overhead_ratio": "<= 1.25", "rss_growth": "<= 1.25", "chunking_vs_tokenizer": ">= 0.8",
                          "host_ceiling_vs_tokenizer": ">= 0.85",
                          "resume_1000_shards_s": "<= 30"}
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
