"""The search service under load: latency, batching, feedback writes, and a publish during a load run.

The store is made by the real pipeline (`wikiembed run --index float32`, the bundled model on the CPU)
from short synthesized articles, one chunk each: 50,000 in the full run (about the size where a scan
takes tens of milliseconds and the index is what answers), 300 with `--quick`, 40 with `--smoke` (every
phase at a few requests: it checks the script, its figures mean nothing). It is built once under `--work` and
reused. The service runs as `wikiembed serve` in its own process on loopback; the clients are threads of
this one (keep-alive connections, one per client; the throughput phase's clients use the standard library's
`http.client`, which costs a fraction of httpx's CPU a request).

1. latency: one client, GET /search?k=10 one after another (distinct queries): p50 and p99.
2. throughput: the same number of requests from 1 client and from 16 at once: the ratio of rates
   (the micro-batcher embeds what piles up during a forward pass together).
3. feedback: POST /feedback records from 16 clients at once; then the file must hold every record
   exactly once, each line whole, and `wikiembed.queries.read_queries` (what improve --pairs uses)
   must read it.
4. publish under load: 16 clients search while `wikiembed run` publishes a new generation of the
   store (an incremental run over a source with articles added and edited; the old generation's folder
   is removed when the new one is published). No request may fail, and every answer's hits must be
   the text of the generation the answer names (an edited article's text differs between the two).

    python bench/serve.py --work /tmp/serve-bench --json bench/results/2026-12-07-serve.json
    python bench/serve.py --quick --work /tmp/serve-quick --json /tmp/serve-quick.json

Every phase is bounded in requests and in seconds (`--max-seconds` for the publish phase).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

# "pause": seconds each client of the publish phase waits before each search (0: one after another, the load).
SIZES = {
    "full": {"articles": 50_000, "shard_rows": 10_000, "latency": 300, "throughput": 320, "feedback": 10_000, "added": 500, "edited": 500,
             "pause": 0},
    "quick": {"articles": 300, "shard_rows": 150, "latency": 20, "throughput": 32, "feedback": 160, "added": 10, "edited": 10, "pause": 0},
    # Two requests of each of the 16 clients in the throughput and feedback phases (a negative and a positive record each);
    # in the publish phase two searches a second from each client, which still see both generations.
    "smoke": {"articles": 40, "shard_rows": 20, "latency": 10, "throughput": 32, "feedback": 32, "added": 4, "edited": 4, "pause": 0.5},
}
CLIENTS = 16
K = 10
# Pseudo-words: a vocabulary of this many, articles of 8 to 16 of them, queries of 2 to 4.
VOCABULARY = 3000


def _words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ren", "tu", "sa", "vor", "el", "qui", "dan", "po", "ris", "ne", "gal", "ho", "zu", "fen", "ta"]
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(out)


WORDS = _words(VOCABULARY, 0)


def _article(i: int, version: int) -> dict[str, str]:
    rng = random.Random(i * 7919 + version * 104729)
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))).capitalize() + "."
    if version > 1:
        text = f"Revised {version}: {text}"
    return {"id": str(i), "url": f"https://example.org/{i}", "title": f"Article {i}", "text": text}


def write_source(path: Path, size: dict[str, int], version: int) -> dict[str, str]:
    """Source `version` (1: the base; 2: `edited` articles rewritten and `added` new ones); returns id -> text."""
    n = size["articles"]
    ids = range(n + (size["added"] if version == 2 else 0))
    edited = set(range(0, n, max(1, n // size["edited"]))) if version == 2 else set()
    texts = {}
    with path.open("w", encoding="utf-8") as fh:
        for i in ids:
            row = _article(i, 2 if i in edited else 1)
            texts[row["id"]] = row["text"]
            fh.write(json.dumps(row) + "\n")
    return texts


def run_cli(*args: str, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wikiembed.flows.cli", *args], capture_output=True, text=True, **kw)


def build_store(work: Path, size: dict[str, int]) -> tuple[Path, float | None]:
    """The store of source version 1 (built once: reused when its index is there); (store, seconds to build)."""
    store = work / "store"
    source = work / "source.jsonl"
    if (store / "current").exists() and list((store / "current" / "index").glob("*.json")):
        return store, None
    work.mkdir(parents=True, exist_ok=True)
    write_source(source, size, 1)
    started = time.perf_counter()
    proc = run_cli("run", "--source", str(source), "--store", str(store), "--shard-rows", str(size["shard_rows"]), "--index", "float32")
    if proc.returncode != 0:
        raise SystemExit(f"building the store failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return store, time.perf_counter() - started


class Served:
    """`wikiembed serve` in its own process, on a free loopback port."""

    def __init__(self, store: Path, feedback: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "wikiembed.flows.cli", "serve", "--store", str(store), "--port", "0",
                                      "--feedback", str(feedback)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if " on http://" not in line:
            self.proc.kill()
            raise SystemExit(f"wikiembed serve did not start: {line}{self.proc.stderr.read() if self.proc.stderr else ''}")
        self.url = line.rsplit(" on ", 1)[1].split(";")[0].strip()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _query(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4)))


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def latency(url: str, count: int) -> dict[str, Any]:
    rng = random.Random(1)
    times, methods = [], set()
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(10):  # warm-up: the row groups hits come from get decoded once
            client.get("/search", params={"q": _query(rng), "k": K}).raise_for_status()
        for _ in range(count):
            q = _query(rng)
            started = time.perf_counter()
            r = client.get("/search", params={"q": q, "k": K})
            times.append(time.perf_counter() - started)
            r.raise_for_status()
            methods.add(r.json()["method"])
    return {"requests": count, "p50_ms": round(_pct(times, 50) * 1000, 1), "p99_ms": round(_pct(times, 99) * 1000, 1),
            "mean_ms": round(statistics.mean(times) * 1000, 1), "methods": sorted(methods)}


def _searches(url: str, clients: int, total: int, seed: int) -> tuple[float, int]:
    """`total` GET /search split over `clients` threads; (seconds, failures)."""
    per = total // clients
    failures = [0]

    where = urlsplit(url)

    def one(c: int) -> None:
        rng = random.Random(seed * 1000 + c)
        # The standard library's client: a keep-alive connection at a fraction of httpx's CPU per request,
        # so that the load generator takes little of the cores the service shares with it.
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
        try:
            for _ in range(per):
                conn.request("GET", "/search?" + urlencode({"q": _query(rng), "k": K}))
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    failures[0] += 1
        finally:
            conn.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(clients)))
    return time.perf_counter() - started, failures[0]


def throughput(url: str, total: int) -> dict[str, Any]:
    one_s, one_failed = _searches(url, 1, total, 2)
    before = httpx.get(url + "healthz").json()
    many_s, many_failed = _searches(url, CLIENTS, total, 3)
    after = httpx.get(url + "healthz").json()
    batches = after["batches"] - before["batches"]  # of the 16-client phase only
    return {"requests": total, "one_client_per_s": round(total / one_s, 1), f"clients_{CLIENTS}_per_s": round(total / many_s, 1),
            "ratio": round(one_s / many_s, 2), "failed": one_failed + many_failed,
            "mean_batch": round((after["searches"] - before["searches"]) / max(1, batches), 2)}


def feedback(url: str, path: Path, total: int, store_ids: int) -> dict[str, Any]:
    from wikiembed.queries import read_queries

    before = path.read_bytes().count(b"\n") if path.exists() else 0
    per = total // CLIENTS
    failures = [0]

    def one(c: int) -> None:
        rng = random.Random(c)
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(per):
                body = {"query": f"bench client {c} record {i}", "id": str(rng.randrange(store_ids)), "relevant": i % 5 != 0, "rank": 1 + i % 10}
                if client.post("/feedback", json=body).status_code != 201:
                    failures[0] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(one, range(CLIENTS)))
    seconds = time.perf_counter() - started
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    torn = 0 if raw.endswith(b"\n") else 1
    rows = []
    for line in lines[before:-1]:
        try:
            rows.append(json.loads(line))
        except ValueError:
            torn += 1
    tags = [r["query"] for r in rows]
    expected = {f"bench client {c} record {i}" for c in range(CLIENTS) for i in range(per)}
    read = read_queries(path)  # the improve loop's own reader: every line parses, negatives are not positives
    positives = sum(1 for r in rows if r["relevant"])
    return {"records": per * CLIENTS, "seconds": round(seconds, 2), "per_s": round(per * CLIENTS / seconds, 1), "failed": failures[0],
            "lines_written": len(rows), "each_once": sorted(tags) == sorted(expected), "torn_lines": torn,
            "reader_queries": len(read), "positive_records": positives,
            "reader_reads_only_positives": len(read) == len({r["query"] for r in rows if r["relevant"]})}


def publish_under_load(url: str, work: Path, store: Path, size: dict[str, int], max_seconds: float) -> dict[str, Any]:
    """16 clients search while an incremental `wikiembed run` publishes the other source version."""
    source = work / "source.jsonl"
    first = httpx.get(url + "healthz").json()
    # The store publishes version 1 or 2 of the source (a run of this bench leaves the other one published).
    now_version = 2 if first["chunks"] > size["articles"] else 1
    texts = {1: write_source(work / "v1.jsonl", size, 1), 2: write_source(work / "v2.jsonl", size, 2)}
    next_version = 3 - now_version
    shutil.copyfile(work / f"v{next_version}.jsonl", source)
    old_gen = first["generation"]
    seen: dict[str, int] = {}
    chunks: dict[str, set[int]] = {}
    problems: list[str] = []
    counts = {"requests": 0, "failed": 0}
    stop = threading.Event()
    lock = threading.Lock()
    versions_by_gen: dict[str, int] = {old_gen: now_version}
    added_ids = [str(i) for i in range(size["articles"], size["articles"] + size["added"])]

    def client(c: int) -> None:
        rng = random.Random(100 + c)
        with httpx.Client(base_url=url, timeout=60) as http:
            while not stop.wait(size["pause"]):
                # Half the queries are an added or edited article's own words, so both generations' hits differ.
                q = texts[2][rng.choice(added_ids)] if rng.random() < 0.5 else _query(rng)
                try:
                    r = http.get("/search", params={"q": q[:200], "k": K})
                except httpx.HTTPError as exc:
                    with lock:
                        counts["failed"] += 1
                        problems.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    counts["requests"] += 1
                    if r.status_code != 200:
                        counts["failed"] += 1
                        problems.append(f"{r.status_code}: {r.text[:200]}")
                        continue
                    answer = r.json()
                    gen = answer["generation"]
                    seen[gen] = seen.get(gen, 0) + 1
                    chunks.setdefault(gen, set()).add(answer["chunks"])
                    version = versions_by_gen.get(gen, next_version)
                    for hit in answer["hits"]:
                        expected = texts[version].get(hit["id"])
                        if expected is None or expected[hit["char_start"]:hit["char_end"]] != hit["text"]:
                            problems.append(f"generation {gen} answered article {hit['id']} with text of another generation")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    try:
        proc = run_cli("run", "--source", str(source), "--store", str(store), "--shard-rows", str(size["shard_rows"]), "--index", "float32",
                       timeout=max_seconds)
        published_s = time.perf_counter() - started
        deadline = time.perf_counter() + 20
        while time.perf_counter() < deadline and len(seen) < 2:
            time.sleep(0.2)
        time.sleep(2)  # answers from the new generation for a while
    finally:
        stop.set()
        for t in threads:
            t.join()
    if proc.returncode != 0:
        problems.append(f"the publishing run failed: {proc.stderr[-1000:]}")
    new_gen = next((g for g in seen if g != old_gen), None)
    return {"requests": counts["requests"], "failed": counts["failed"], "seconds": round(time.perf_counter() - started, 1),
            "publish_seconds": round(published_s, 1), "generations": {g: seen[g] for g in seen}, "old": old_gen, "new": new_gen,
            "chunks_per_generation": {g: sorted(c) for g, c in chunks.items()}, "mixed_or_wrong_answers": len(problems),
            "problems": problems[:5]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/tmp/wikiembed-serve-bench", help="where the store and the feedback file are kept (reused)")
    p.add_argument("--quick", action="store_true", help="300 articles and a few hundred requests")
    p.add_argument("--smoke", action="store_true", help="40 articles and a few requests a phase: checks the script in seconds")
    p.add_argument("--max-seconds", type=float, default=600, help="the publishing run's limit")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    size = SIZES[mode]
    work = Path(args.work)
    store, build_s = build_store(work, size)
    fb = work / "feedback.jsonl"
    fb.unlink(missing_ok=True)
    served = Served(store, fb)
    try:
        health = httpx.get(served.url + "healthz").json()
        results: dict[str, Any] = {
            "kind": "serve",
            "mode": mode,
            "command": "python bench/serve.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} (no GPU: the CPU embeds the queries)",
            "store": {"chunks": health["chunks"], "model": health["model"], "built_seconds": round(build_s, 1) if build_s else None,
                      "how": "wikiembed run --index float32 over synthesized articles of 8-16 words (one chunk each), bundled model on the CPU"},
            "clients": CLIENTS,
            "k": K,
            # Other work on the machine shares its cores with the service and the clients: the 1-minute load
            # average before each phase says how much.
            "load_average": {"start": round(os.getloadavg()[0], 2)},
        }
        results["latency"] = latency(served.url, size["latency"])
        results["load_average"]["after_latency"] = round(os.getloadavg()[0], 2)
        print("latency", results["latency"], flush=True)
        results["throughput"] = throughput(served.url, size["throughput"])
        results["load_average"]["after_throughput"] = round(os.getloadavg()[0], 2)
        print("throughput", results["throughput"], flush=True)
        results["feedback"] = feedback(served.url, fb, size["feedback"], size["articles"])
        print("feedback", {k: v for k, v in results["feedback"].items()}, flush=True)
        results["publish"] = publish_under_load(served.url, work, store, size, args.max_seconds)
        results["load_average"]["end"] = round(os.getloadavg()[0], 2)
        print("publish", results["publish"], flush=True)
    finally:
        served.stop()
    results["targets"] = {
        "p50_ms_at_most_30": results["latency"]["p50_ms"] <= 30,
        "ratio_at_least_3": results["throughput"]["ratio"] >= 3 and results["throughput"]["failed"] == 0,
        "feedback_each_once_none_torn": results["feedback"]["each_once"] and results["feedback"]["torn_lines"] == 0 and results["feedback"]["failed"] == 0,
        "publish_no_failure_one_generation": results["publish"]["failed"] == 0 and results["publish"]["mixed_or_wrong_answers"] == 0
        and results["publish"]["new"] is not None,
    }
    print(json.dumps(results["targets"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
