"""Benchmark: decoding TEI's answers, our client's path against the original write-up's.

What it may touch: CPU and memory, and the `--json` file it writes. No network,
no server: the answers are built here, byte for byte as TEI 1.9 shapes them, so
the number measures the client alone (on a GPU host, the client's decode is what
competes with the GPU for the CPU).

The payload: `--vectors` unit vectors of `--dim`, answered in responses of
`--batch` inputs (TEI's default max client batch is 32). The same vectors go out
two ways:

- seed: `/embed` JSON floats (float32 printed shortest, as TEI's serde does),
  decoded as the original write-up did, `np.array(res.json())` per response;
- ours: `/v1/embeddings` with `encoding_format: "base64"`, decoded by
  `wikiembed.backends.tei.decode_v1_embeddings`, the function `TEIBackend` uses.

Both decoders must return the exact vectors (checked). Also reported: our
fallback for servers without the base64 route (`decode_embed`, orjson floats).

    python bench/tei_client.py --json bench/results/tei_client.json
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from wikiembed.backends.tei import decode_embed, decode_v1_embeddings  # noqa: E402


def make_vectors(n: int, dim: int, unique: int, seed: int = 0) -> np.ndarray:
    """`n` unit float32 vectors, `unique` distinct ones repeated (printing floats is the slow part)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((min(n, unique), dim))
    base = (base / np.linalg.norm(base, axis=1, keepdims=True)).astype(np.float32)
    return base[np.arange(n) % len(base)]


def embed_body(rows: list[str]) -> bytes:
    """An /embed answer: `[[f, ...], ...]` from rows already printed as JSON arrays."""
    return ("[" + ",".join(rows) + "]").encode()


def v1_base64_body(vectors: np.ndarray, model: str) -> bytes:
    data = [
        {"object": "embedding", "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode(), "index": i}
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": 128 * len(vectors), "total_tokens": 128 * len(vectors)}
    return json.dumps({"object": "list", "data": data, "model": model, "usage": usage}).encode()


def best_of(trials: int, fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(trials):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    assert out is not None
    return best, out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=32, help="inputs per TEI answer")
    parser.add_argument("--unique", type=int, default=1024, help="distinct vectors (the rest repeat)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    vectors = make_vectors(args.vectors, args.dim, args.unique)
    # float32 -> shortest decimal that round-trips (what TEI's serde_json/ryu prints), once per distinct row.
    distinct = {i: "[" + ",".join(str(x) for x in vectors[i]) + "]" for i in range(min(args.vectors, args.unique))}
    starts = range(0, args.vectors, args.batch)
    seed_responses, our_responses, fallback_responses = [], [], []
    for s in starts:
        chunk = vectors[s : s + args.batch]
        floats = embed_body([distinct[(s + j) % len(distinct)] for j in range(len(chunk))])
        seed_responses.append(httpx.Response(200, content=floats))
        fallback_responses.append((httpx.Response(200, content=floats), len(chunk)))
        our_responses.append((httpx.Response(200, content=v1_base64_body(chunk, "BAAI/bge-small-en-v1.5")), len(chunk)))

    def seed() -> np.ndarray:
        return np.concatenate([np.array(res.json()) for res in seed_responses])

    def ours() -> np.ndarray:
        return np.concatenate([decode_v1_embeddings(res.content, n) for res, n in our_responses])

    def fallback() -> np.ndarray:
        return np.concatenate([decode_embed(res.content, n) for res, n in fallback_responses])

    t_seed, v_seed = best_of(args.trials, seed)
    t_ours, v_ours = best_of(args.trials, ours)
    t_fallback, v_fallback = best_of(args.trials, fallback)
    for name, got in (("seed", v_seed), ("ours", v_ours), ("fallback", v_fallback)):
        if not np.array_equal(got.astype(np.float32), vectors):
            raise SystemExit(f"{name} decoder returned different vectors; the benchmark is void")

    result = {
        "vectors_per_s": args.vectors / t_ours,
        "seed_vectors_per_s": args.vectors / t_seed,
        "speedup_vs_seed": t_seed / t_ours,
        "fallback_vectors_per_s": args.vectors / t_fallback,
        "vectors": args.vectors,
        "dim": args.dim,
        "batch": args.batch,
        "trials": args.trials,
        "seed_mb": sum(len(r.content) for r in seed_responses) / 1e6,
        "ours_mb": sum(len(r.content) for r, _ in our_responses) / 1e6,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu_count": os.cpu_count() or 0,
    }
    print(
        f"decode {args.vectors} x {args.dim} in answers of {args.batch}: "
        f"ours (base64) {result['vectors_per_s']:,.0f} vec/s, seed np.array(res.json()) "
        f"{result['seed_vectors_per_s']:,.0f} vec/s -> {result['speedup_vs_seed']:.1f}x "
        f"(our float fallback: {result['fallback_vectors_per_s']:,.0f} vec/s)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
