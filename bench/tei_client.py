"""Benchmark: the client side of `--backend tei`: decoding TEI's answers, and the flow's ceiling.

What it may touch: CPU and memory, and the `--json` file it writes. No network,
no server: the answers are built here, byte for byte as TEI 1.9 shapes them, so
the number measures the client alone (on a GPU host, the client's decode is what
competes with the GPU for the CPU).

The payload: `--vectors` unit vectors of `--dim`, answered in responses of
`--batch` inputs (TEI's default max client batch is 32). The same vectors go out
two ways:

- seed: `/embed` JSON floats (float32 printed shortest, as TEI's serde does),
  decoded as Modal's English-Wikipedia embedding example did, `np.array(res.json())` per response;
- ours: `/v1/embeddings` with `encoding_format: "base64"`, decoded by
  `wikiembed.backends.tei.decode_v1_embeddings`, the function `TEIBackend` uses.

Both decoders must return the exact vectors (checked). Also reported: our
fallback for servers without the base64 route (`decode_embed`, orjson floats).

    python bench/tei_client.py --json bench/results/tei_client.json

With `--flow`, the flow's ceiling instead: `wikiembed run --backend tei` (a CLI
process, as a user runs it) over `--articles` articles of the built-in sample
(calibrated to Wikipedia's density; written to a parquet file first, so the
sample's generation is not timed), against the TEI stand-in
(`tests/standins/tei_server.py`) in its own process, answering as fast as it
can: the figure is what the flow's machine can feed, not a GPU. Once per chunker
(`tokens`, `chars`), `--repeats` times. The rate is the run summary's
`chars_per_s` (embedded characters over the flow's own time, from planning to
export; the interpreter's and Prefect's start-up excluded). `--before-python`
runs the same commands with another interpreter (one whose installed wikiembed is
an earlier checkout), alternating with this one, so both sides run under the same
load. Also measured per run: the CPU seconds of the flow's own process and of its
worker processes (sampled while it runs; Prefect's API server left out), whence
`flow_process_ceiling_chars_per_s` (characters over the flow process's CPU
seconds: what one interpreter can feed, however many cores the machine has) and
`chars_per_cpu_s` (characters over all of them: the rate each core adds). The
stand-in's CPU seconds are reported too: on a small machine it competes with the
flow for the cores.

    python bench/tei_client.py --flow --json bench/results/tei_flow.json

`--smoke` makes either a check of the script in seconds: the decoders on a few answers, once; with
`--flow`, one run of the token chunker on a few articles (its CLI process uses the Prefect API of
PREFECT_API_URL where set).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere (and the stand-in)

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


ROOT = Path(__file__).resolve().parents[1]
# --smoke sizes: the decoders on a few answers once; the flow on a few articles, the token chunker, once.
SMOKE_DECODE = {"vectors": 256, "unique": 64, "trials": 1}
SMOKE_FLOW = {"articles": 30, "shard_rows": 15, "repeats": 1, "chunkers": ("tokens",)}
FLOW_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}  # fmt: skip


def _cpu_s(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _tei_stand_in() -> tuple[str, subprocess.Popen]:
    from wikiembed.model import DEFAULT_MODEL

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.standins.tei_server", "--port", str(port), "--model-id", DEFAULT_MODEL,
         "--max-client-batch-size", "256", "--max-batch-tokens", "1000000", "--max-concurrent-requests", "4096"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(url + "/info", timeout=1.0).raise_for_status()
            return url, server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("the TEI stand-in did not start")


def flow_run(
    python: str, source: Path, store: Path, url: str, chunker: str, shard_rows: int, server: int, extra: list[str]
) -> dict[str, float]:
    """One `wikiembed run --backend tei` in a fresh process; its summary's rate and the stand-in's CPU."""
    summary_path = store.with_suffix(".json")
    cmd = [python, "-m", "wikiembed.flows.cli", "run", "--source", str(source), "--store", str(store), "--backend", "tei",
           "--tei-url", url, "--chunker", chunker, "--shard-rows", str(shard_rows), "--summary-json", str(summary_path),
           *extra]  # fmt: skip
    # Run outside the repository: `-m` puts the working directory first on the path, and the
    # interpreter must import its own installed checkout.
    server_cpu = _cpu_s(server)
    started = time.perf_counter()
    log = store.with_suffix(".log").open("w+")
    proc = subprocess.Popen(cmd, cwd=store.parent, env={**os.environ, **FLOW_ENV}, stdout=subprocess.DEVNULL, stderr=log)
    flow_cpu, worker_cpu = _watch(proc)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        log.seek(0)
        raise SystemExit(f"{' '.join(cmd)} failed:\n{log.read()[-3000:]}")
    summary = json.loads(summary_path.read_text())
    return {"chars_per_s": summary["chars_per_s"], "flow_s": summary["seconds"], "process_wall_s": round(wall, 2),
            "chunks": summary["chunks"], "flow_process_cpu_s": round(flow_cpu, 2), "worker_cpu_s": round(worker_cpu, 2),
            "stand_in_cpu_s": round(_cpu_s(server) - server_cpu, 2)}  # fmt: skip


def _watch(proc: subprocess.Popen, every_s: float = 0.1) -> tuple[float, float]:
    """Wait for `proc`; return the CPU seconds of the process itself and of its worker processes
    (tokenizing or shard workers; Prefect's own API server, where it starts one, is left out),
    as last seen (each process is sampled every `every_s` until it exits)."""
    import psutil

    root = psutil.Process(proc.pid)
    seen: dict[int, float] = {}
    own = 0.0
    while proc.poll() is None:
        try:
            times = root.cpu_times()
            own = times.user + times.system
            for child in root.children(recursive=True):
                if any("uvicorn" in part or "prefect" in part for part in child.cmdline()):
                    continue
                times = child.cpu_times()
                seen[child.pid] = times.user + times.system
        except psutil.Error:  # a process that just ended
            pass
        time.sleep(every_s)
    return own, sum(seen.values())


def flow_ceiling(args: argparse.Namespace) -> dict[str, object]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wikiembed.sample import generate_articles

    work = Path(tempfile.mkdtemp(prefix="wikiembed-tei-flow-"))
    try:
        source = work / "articles.parquet"
        pq.write_table(pa.Table.from_pylist(list(generate_articles(args.articles))), source)
        chars = sum(len(t) for t in pq.read_table(source, columns=["text"]).column("text").to_pylist())
        sides = {"after": sys.executable} | ({"before": args.before_python} if args.before_python else {})
        url, server = _tei_stand_in()
        runs: dict[str, dict[str, list[dict[str, float]]]] = {c: {side: [] for side in sides} for c in args.chunkers}
        try:
            for repeat in range(args.repeats):
                for chunker in runs:
                    for side in sorted(sides, key=lambda name: (name == "after") == (repeat % 2 == 0)):
                        store = work / f"{side}-{chunker}-{repeat}"
                        store.mkdir()
                        store = store / "store"
                        extra = ["--shard-workers", str(args.shard_workers)] if args.shard_workers and side == "after" else []
                        got = flow_run(sides[side], source, store, url, chunker, args.shard_rows, server.pid, extra)
                        runs[chunker][side].append(got)
                        print(f"{chunker:6s} {side:6s} {got}", flush=True)
                        shutil.rmtree(store.parent)
        finally:
            server.terminate()
            server.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {c: {side: max(r["chars_per_s"] for r in rs) for side, rs in by_side.items()} for c, by_side in runs.items()}
    # What one interpreter can feed: the run's characters over the CPU seconds of the flow's own
    # process (its ceiling whatever the number of cores); and over all of its processes' CPU
    # seconds (the rate each core adds, where the work is spread over processes).
    one_interpreter = {c: {side: round(max(chars / r["flow_process_cpu_s"] for r in rs)) for side, rs in by_side.items()}
                       for c, by_side in runs.items()}  # fmt: skip
    per_core = {c: {side: round(max(chars / (r["flow_process_cpu_s"] + r["worker_cpu_s"]) for r in rs)) for side, rs in by_side.items()}
                for c, by_side in runs.items()}  # fmt: skip
    result: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"),
        "articles": args.articles,
        "chars": chars,
        "shard_rows": args.shard_rows,
        "best_chars_per_s": best,
        "flow_process_ceiling_chars_per_s": one_interpreter,
        "chars_per_cpu_s": per_core,
        "runs": runs,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
    }
    if args.before_python:
        result["speedup"] = {c: round(b["after"] / b["before"], 2) for c, b in best.items()}
    return result


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flow", action="store_true", help="measure the flow's ceiling instead of decoding (see above)")
    parser.add_argument("--articles", type=int, default=16_000, help="--flow: sample articles (16,000: about 19M characters)")
    parser.add_argument("--shard-rows", type=int, default=1000, help="--flow: articles per shard")
    parser.add_argument("--repeats", type=int, default=2, help="--flow: runs per chunker and side (the best is reported)")
    parser.add_argument("--before-python", help="--flow: also run with this interpreter, alternating")
    parser.add_argument("--shard-workers", type=int, help="--flow: this interpreter's runs only (the other may predate it)")
    parser.add_argument("--note", default="", help="--flow: recorded with the results (e.g. the load on the machine)")
    parser.add_argument("--vectors", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=32, help="inputs per TEI answer")
    parser.add_argument("--unique", type=int, default=1024, help="distinct vectors (the rest repeat)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--smoke", action="store_true", help="a few answers decoded once; with --flow, one small run")
    args = parser.parse_args(argv)
    args.chunkers = ("tokens", "chars")
    if args.smoke:
        vars(args).update(SMOKE_FLOW if args.flow else SMOKE_DECODE)
    if args.flow:
        flow = flow_ceiling(args)
        flow["note"] = args.note
        flow["command"] = "python bench/tei_client.py " + " ".join(sys.argv[1:] if argv is None else argv)
        shown = ("best_chars_per_s", "speedup", "flow_process_ceiling_chars_per_s", "chars_per_cpu_s")
        print(json.dumps({k: flow[k] for k in shown if k in flow}, indent=1))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(flow, indent=1) + "\n")
        return flow

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
        "date": time.strftime("%Y-%m-%d"),
        "command": "python bench/tei_client.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
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
