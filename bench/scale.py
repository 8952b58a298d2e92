"""All of English Wikipedia by simulation: every step but the model's arithmetic, at fractions of its size.

What it may touch: a work folder (`--work`, default a temp dir: source files, stores, exports), one
Prefect server (`prefect server start` on a free loopback port, its home in the work folder; or the
one PREFECT_API_URL names), the
Hub stand-in (`tests/standins/hub_server.py`, in this process; what it is sent is spooled to the work folder),
CPU, and the `--json` file.

The corpus: the built-in sample's generator (`wikiembed.sample`: Simple English lengths, a mean of
about 1,100 characters, one article in 2,000 of 100k-250k characters), as many articles as make
`fraction` of English Wikipedia's 19.56 billion characters. Sizes are counted in characters,
which chunks, vectors and bytes follow; articles are then about 2.8 times English Wikipedia's
count at the same fraction (its mean is about 3,000 characters), so per-article costs are
overstated, not understated. Day 2 is the same corpus with 1% of articles edited (a paragraph
appended), 0.5% added and 0.2% removed, picked by a seeded draw; `--day2-times K` multiplies these
rates (day 1 unchanged), so that a smaller size can re-embed as many chunks on day 2 as a larger one
(day 2's peak memory follows the chunks it re-embeds: docs/SCALE.md).

The engine costs nothing: the CLI runs in a process where `TorchEngine.embed` / `embed_ids` return a
unit vector derived from each chunk's token ids (or text) by a fixed random projection of its
blake2b digest. The model is still opened (tokenizer, kind, revision), and every vector passes the
store's checks. Everything else is the real `wikiembed` command: snapshot, plan, the token
chunker on every core, shard files and markers, compact forms in the same pass, the card, status,
export, index, search, eval and upload.

For every step and size: `seconds`, `peak_rss_mb` (the flow's process) and `workers_peak_rss_mb`
(the largest of its child processes), `bytes_written` and `files` (the bytes of files created or
replaced under the store and the step's output folder, and how many were created; from the tree
before and after, so a rewrite of an unchanged file counts). The day-1 run is killed with SIGKILL
once half its shards are done and resumed (`resume`: seconds from the restart until its first new
shard began embedding, and whether any finished shard was redone). `exponents`: per step, the
growth of seconds and bytes between the two largest sizes (log ratio over the log ratio of
characters). `incremental`: day 2 against day 1, with `changed_chunks_expected` counted from the
two days' output files (chunks of day 2 whose text day 1 does not hold), not from the run's own
counters. `index_day2`: `wikiembed index` on day 2's generation, which indexes only its own new data
files and reuses day 1's indexes of the files it keeps (`parts_built`, `parts_reused`, `rows_built`).
Up to 1/100, day 1 runs twice more: through the worker-process executor against the TEI stand-in
(`run_day1_tei_workers`), and through `--backend modal` on a `modal:` Volume store in the Modal
stand-in (`run_day1_modal_volume`: tests/standins/modal_cloud.py, containers as subprocesses over an
emulated Volume, cut into at least `--volume-shards` shards, 2,000 by default; bytes and files are
those under the emulated Volume, plus its files, bytes, commits and reloads at the end and the largest
call), each into a store removed after.

    python bench/scale.py --fractions 0.001,0.01,0.1 --json bench/results/DATE-scale.json
    python bench/scale.py --smoke --json /tmp/scale-smoke.json     # seconds: checks the script
    python bench/scale.py --report bench/results/DATE-scale.json   # writes docs/SCALE.md from a run
    python bench/scale.py --upload WORK/f0.1/store                  # the upload step alone, of a store a run left
    python bench/scale.py --fractions 0.01 --only run_day1_modal_volume --work WORK --json OUT.json   # that step alone
    python bench/scale.py --fractions 0.01 --day2-times 10 --json OUT.json   # 1/100 with 1/10's day-2 change in chunks
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
ENWIKI_CHARS = 19_560_000_000  # English Wikipedia, 20231101.en
DAY2 = {"edited": 0.01, "added": 0.005, "removed": 0.002}
SMOKE_FRACTION = 0.00002  # about 390k characters, 350 articles
SMOKE_SHARD_ROWS = 60
QUERIES = 100
# The worker-process executor (`--backend tei`, against the TEI stand-in) runs day 1 again up to this size.
TEI_MAX_FRACTION = 0.01
# Day 1 through `--backend modal` on a Volume store in the Modal stand-in runs up to this size, cut into
# at least `--volume-shards` shards (VOLUME_SHARDS; SMOKE_VOLUME_SHARDS at the smoke size), on this many containers.
VOLUME_MAX_FRACTION = 0.01
VOLUME_SHARDS = 2000
SMOKE_VOLUME_SHARDS = 4  # the fewest whose markers give `shards_per_s_halves` (two shards a half)
VOLUME_CONTAINERS = 2
VOLUME_STEP = "run_day1_modal_volume"


# -- the corpus -----------------------------------------------------------------------------------

def _articles(start: int, stop: int) -> list[dict[str, str]]:
    from wikiembed.sample import generate_articles

    return list(generate_articles(stop, start=start))


def _write_corpus(folder: Path, fraction: float, rates: dict[str, float] = DAY2) -> dict[str, Any]:
    """day1.parquet and day2.parquet for `fraction` of English Wikipedia's characters, day 2 with the change `rates`
    (kept in the work folder with their counts: the generator is seeded, so a rerun with the same `--work` reuses them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wikiembed.sample import generate_articles

    probe = list(generate_articles(4000))
    mean = sum(len(a["text"]) for a in probe) / len(probe)
    n = max(50, round(fraction * ENWIKI_CHARS / mean))
    made = folder / "corpus.json"
    if made.exists():
        counts = json.loads(made.read_text())
        if counts.get("articles") == n and counts.get("day2_rates", DAY2) == rates and all((folder / f).exists() for f in ("day1.parquet", "day2.parquet")):
            return dict(counts, seconds=0.0, reused=True)
    rng = random.Random(f"scale-day2-{n}")
    schema = pa.schema([(c, pa.string()) for c in ("id", "url", "title", "text")])
    counts = {"articles": 0, "chars": 0, "day2_articles": 0, "edited": 0, "added": 0, "removed": 0}
    block = 20_000
    started = time.perf_counter()
    with pq.ParquetWriter(folder / "day1.parquet", schema) as day1, pq.ParquetWriter(folder / "day2.parquet", schema) as day2, \
            ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        ranges = [(s, min(s + block, n)) for s in range(0, n, block)]
        for rows in pool.map(_articles, *zip(*ranges)):
            counts["articles"] += len(rows)
            counts["chars"] += sum(len(r["text"]) for r in rows)
            day1.write_table(pa.Table.from_pylist(rows, schema=schema))
            changed = []
            for r in rows:
                draw = rng.random()
                if draw < rates["removed"]:
                    counts["removed"] += 1
                    continue
                if draw < rates["removed"] + rates["edited"]:
                    counts["edited"] += 1
                    r = dict(r, text=r["text"] + "\n\nOn the second day this article gained a closing paragraph about its history.")
                changed.append(r)
            day2.write_table(pa.Table.from_pylist(changed, schema=schema))
        added = max(1, round(n * rates["added"]))
        new = [dict(a, id=f"new-{i}", url=f"https://example.org/new-{i}") for i, a in enumerate(generate_articles(added, seed=7))]
        counts["added"] = added
        day2.write_table(pa.Table.from_pylist(new, schema=schema))
    counts["day2_articles"] = counts["articles"] - counts["removed"] + counts["added"]
    counts["seconds"] = round(time.perf_counter() - started, 1)
    made.write_text(json.dumps(dict(counts, day2_rates=rates)))
    return counts


# -- the engine that costs nothing ----------------------------------------------------------------

def _free_engine() -> None:
    """Replace the engine's forward pass with a digest projection (see the module docstring)."""
    import numpy as np

    from wikiembed.backends import engine

    projections: dict[int, np.ndarray] = {}

    def unit(self: Any, digests: list[bytes]) -> np.ndarray:
        if self.dim not in projections:
            projections[self.dim] = np.random.default_rng(0).standard_normal((128, self.dim)).astype(np.float32)
        if not digests:
            return np.zeros((0, self.dim), dtype=np.float32)
        bits = np.unpackbits(np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 16), axis=1)
        v = (bits.astype(np.float32) * 2 - 1) @ projections[self.dim]
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed(self: Any, texts: Any, prompt: str = "") -> np.ndarray:
        return unit(self, [hashlib.blake2b((prompt + t).encode(), digest_size=16).digest() for t in texts])

    def embed_ids(self: Any, ids: Any, offsets: Any, prompt: str = "") -> np.ndarray:
        raw = np.ascontiguousarray(ids, dtype=np.int64)
        return unit(self, [hashlib.blake2b(raw[a:b].tobytes(), digest_size=16).digest() for a, b in zip(offsets[:-1], offsets[1:])])

    engine.TorchEngine.embed = embed
    engine.TorchEngine.embed_ids = embed_ids


def _as_cli(argv: list[str]) -> int:
    _free_engine()
    from wikiembed.flows.cli import main

    return main(argv)


def _search_figures(store: str, form_name: str = "float32") -> dict[str, Any]:
    """Warm search latency through the library, exact and through the index: 1 query, then 100."""
    _free_engine()
    import numpy as np

    from wikiembed.search import StoreVectors

    vectors = StoreVectors(store)
    form = vectors.form(form_name)
    queries = vectors.embed_queries([f"history of the river bridge number {i}" for i in range(QUERIES)])
    out: dict[str, Any] = {"chunks": None}

    def timed(fn: Callable[[], Any]) -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    out["exact_1_s"] = timed(lambda: vectors.top(queries[:1], 10, form, exact=True))
    out["exact_100_s"] = timed(lambda: vectors.top(queries, 10, form, exact=True))
    index, note = vectors.index(form)
    out["index_note"] = note
    if index is not None:
        vectors.top(queries[:1], 10, form)  # warm: the index is loaded on the first query
        each = [timed(lambda q=q: vectors.top(queries[q:q + 1], 10, form)) for q in range(QUERIES)]
        out["index_p50_ms"] = round(float(np.median(each)) * 1000, 2)
        out["index_p99_ms"] = round(float(np.percentile(each, 99)) * 1000, 2)
        out["index_100_s"] = timed(lambda: vectors.top(queries, 10, form))
    return out


# -- measuring a step -----------------------------------------------------------------------------

def _tree(paths: list[Path]) -> dict[str, tuple[int, int, int]]:
    """path -> (inode, mtime_ns, size) of every plain file under `paths` (symlinks not followed)."""
    out: dict[str, tuple[int, int, int]] = {}
    for top in paths:
        if not top.exists():
            continue
        for folder, _, files in os.walk(top):
            for name in files:
                p = os.path.join(folder, name)
                try:
                    st = os.lstat(p)
                except FileNotFoundError:
                    continue
                if not os.path.islink(p):
                    out[p] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def _written(before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]) -> tuple[int, int]:
    """(bytes of files created or replaced, files created)."""
    changed = [p for p, s in after.items() if before.get(p) != s]
    return sum(after[p][2] for p in changed), sum(p not in before for p in after)


def _step(argv: list[str], env: dict[str, str], watch: list[Path], *, kill_when: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Run one command, sampling the RSS of its process and its children every 0.1 s."""
    import psutil

    before = _tree(watch)
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    flow_peak = workers_peak = 0
    killed = False
    tail: list[bytes] = []
    os.set_blocking(proc.stdout.fileno(), False)
    top = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            flow_peak = max(flow_peak, top.memory_info().rss)
            for child in top.children(recursive=True):
                try:
                    workers_peak = max(workers_peak, child.memory_info().rss)
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        chunk = proc.stdout.read()
        if chunk:
            tail = (tail + [chunk])[-50:]
        if kill_when is not None and not killed and kill_when():
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
        time.sleep(0.1)
    rest = proc.stdout.read()
    if rest:
        tail.append(rest)
    seconds = time.perf_counter() - started
    written, files = _written(before, _tree(watch))
    out = {
        "seconds": round(seconds, 2), "peak_rss_mb": round(flow_peak / 1e6, 1), "workers_peak_rss_mb": round(workers_peak / 1e6, 1),
        "bytes_written": written, "files": files, "rc": proc.returncode,
    }
    if killed:
        out["killed"] = True
    elif proc.returncode != 0:
        out["output_tail"] = b"".join(tail).decode(errors="replace")[-3000:]
    return out


def _evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (POSIX_FADV_DONTNEED; a no-op where there is none)."""
    if not hasattr(os, "posix_fadvise"):
        return
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _cli(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--as-cli", *args]


def _markers(store: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in store.glob("gens/*/_done/*.json")}


def _planned_shards(store: Path) -> int:
    manifests = list(store.glob("gens/*/manifest.json"))
    return len(json.loads(manifests[0].read_text())["plan"]["shards"]) if manifests else 0


# -- one size -------------------------------------------------------------------------------------

def _size(work: Path, fraction: float, env: dict[str, str], shard_rows: int | None, hub: Any, skip: frozenset[str] = frozenset(),
          index_form: str = "float32", volume_shards: int = VOLUME_SHARDS, day2: dict[str, float] = DAY2) -> dict[str, Any]:
    folder = work / f"f{fraction:g}"
    folder.mkdir(parents=True, exist_ok=True)
    corpus = _write_corpus(folder, fraction, day2)
    print(f"[scale] {fraction:g}: {corpus['articles']:,} articles, {corpus['chars']:,} chars ({corpus['seconds']} s)", flush=True)
    store, exported = folder / "store", folder / "export"
    # Every size starts from no store (a rerun with the same `--work` measures day 1 again, not a no-op).
    for old in (store, exported, folder / "day2-summary.json", folder / "index-day2.json"):
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    rows = ["--shard-rows", str(shard_rows)] if shard_rows else []
    run = ["run", "--source", str(folder / "day1.parquet"), "--store", str(store), "--precision", "float32,int8", *rows]
    steps: dict[str, Any] = {}

    # Day 1, killed with SIGKILL once half its shards are done, then resumed by the same command.
    def half_done() -> bool:
        planned = _planned_shards(store)
        return planned >= 2 and len(_markers(store)) >= planned // 2

    first = _step(_cli(*run), env, [store], kill_when=half_done)
    done_at_kill = _markers(store)
    resumed_at = time.time()
    second = _step(_cli(*run), env, [store])
    after = _markers(store)
    new = [p for p in after if p not in done_at_kill]
    resume: dict[str, Any] = {"killed": bool(first.get("killed")), "shards_done_at_kill": len(done_at_kill),
                              "redone": sum(after.get(p) != s for p, s in done_at_kill.items())}
    if first.get("killed") and new:
        began = []
        for p in new:
            marker = json.loads(Path(p).read_text())
            began.append(after[p][1] / 1e9 - float(marker.get("seconds", 0.0)))
        resume["seconds_to_first_shard"] = round(min(began) - resumed_at, 2)
    steps["run_day1"] = {
        "seconds": round(first["seconds"] + second["seconds"], 2),
        "peak_rss_mb": max(first["peak_rss_mb"], second["peak_rss_mb"]),
        "workers_peak_rss_mb": max(first["workers_peak_rss_mb"], second["workers_peak_rss_mb"]),
        "bytes_written": first["bytes_written"] + second["bytes_written"], "files": first["files"] + second["files"],
        "rc": second["rc"], "parts": [first, second],
    }
    if second["rc"] != 0:
        raise SystemExit(f"day 1 failed at fraction {fraction}: {second.get('output_tail')}")
    summary = json.loads((store / "manifest.json").read_text())
    data_bytes = sum(p.stat().st_size for p in (store / "data").glob("*.parquet"))
    chunks = sum(json.loads(p.read_text())["chunks"] for p in (store / "_done").glob("*.json"))

    def skipped(name: str) -> bool:
        if name in skip:
            steps[name] = {"skipped": f"not run (--skip {name})"}
        return name in skip

    if not skipped("status"):
        steps["status"] = _step(_cli("status", "--store", str(store), "--json"), env, [store])
    if not skipped("status_verify"):
        # Both reads start cold: the data files' pages are dropped from the page cache first (what a
        # verify of a store written days ago meets), the plain read of the same files being the disk's speed.
        files_ = sorted((store / "data").glob("*.parquet"))
        _evict(files_)
        started = time.perf_counter()
        for p in files_:
            with open(p, "rb") as fh:
                while fh.read(1 << 22):
                    pass
        read_s = time.perf_counter() - started
        _evict(files_)
        steps["status_verify"] = _step(_cli("status", "--store", str(store), "--verify"), env, [store])
        steps["status_verify"]["read_mb_s"] = round(data_bytes / 1e6 / steps["status_verify"]["seconds"], 1)
        steps["status_verify"]["plain_read_mb_s"] = round(data_bytes / 1e6 / read_s, 1)
        steps["status_verify"]["cold"] = hasattr(os, "posix_fadvise")
    if not skipped("export"):
        steps["export"] = _step(_cli("export", "--store", str(store), "--to", str(exported)), env, [store, exported])
        merged = sorted(exported.glob("data/*.parquet"))
        steps["export"]["largest_file_mb"] = round(max((p.stat().st_size for p in merged), default=0) / 1e6, 1)
    if "index" in skip:
        steps["index"] = {"skipped": "not run (--skip index): searches below scan exactly"}
    else:
        steps["index"] = _step(_cli("index", "--store", str(store), "--form", index_form), env, [store])
    if not skipped("search_1"):
        steps["search_1"] = _step(_cli("search", "--store", str(store), "--form", index_form, "history of the river bridge"), env, [store])
    if fraction != SMOKE_FRACTION and not skipped("search_1_exact"):  # the smoke run checks the exact scan in-process (below) only
        steps["search_1_exact"] = _step(_cli("search", "--store", str(store), "--form", index_form, "--exact", "history of the river bridge"),
                                        env, [store])
    search: dict[str, Any] = {}
    if "search" not in skip:
        probe = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--as-search", str(store), index_form], cwd=ROOT, env=env,
                               capture_output=True, text=True)
        search = json.loads(probe.stdout.strip().splitlines()[-1]) if probe.returncode == 0 else {"error": probe.stderr[-2000:]}
    if not skipped("eval_sample"):
        steps["eval_sample"] = _step(_cli("eval", "--store", str(store), "--sample", "500", "--no-record"), env, [store])
    if skipped("upload"):
        pass
    elif hub is not None:
        sent_before = hub.lfs_bytes
        upload_env = {k: v for k, v in env.items() if k != "HF_HUB_OFFLINE"}
        upload_env.update(HF_ENDPOINT=hub.url, HF_TOKEN="hf_test_token", HF_HUB_DISABLE_XET="1")
        steps["upload"] = _step(_cli("upload", "--store", str(store), "--to", f"hub:alice/scale-{fraction:g}"), upload_env, [store])
        steps["upload"]["hub_bytes"] = hub.lfs_bytes - sent_before

    # Day 2: the same command on the edited corpus.
    day1_texts = _chunk_texts(store)
    run2 = ["run", "--source", str(folder / "day2.parquet"), "--store", str(store), "--precision", "float32,int8", *rows,
            "--summary-json", str(folder / "day2-summary.json")]
    steps["run_day2"] = _step(_cli(*run2), env, [store])
    day2 = json.loads((folder / "day2-summary.json").read_text()) if (folder / "day2-summary.json").exists() else {}
    # Day 2's index: only the new generation's own data files are indexed, the kept files' indexes are day 1's.
    if "index" in skip:
        steps["index_day2"] = {"skipped": "not run (--skip index)"}
    else:
        built = folder / "index-day2.json"
        steps["index_day2"] = _step(_cli("index", "--store", str(store), "--form", index_form, "--json", str(built)), env, [store])
        if built.exists():
            report = json.loads(built.read_text())
            steps["index_day2"].update({key: report.get(key) for key in ("parts_built", "parts_reused", "rows_built")})
    expected = sum(1 for t in _chunk_texts(store, multiset=True) if t not in day1_texts)
    incremental = {
        "changes": day2.get("changes"), "changed_chunks_expected": expected, "reembedded_chunks": day2.get("embedded_chunks"),
        "reused_chunks": day2.get("reused_chunks"),
        "seconds_ratio": round(steps["run_day2"]["seconds"] / steps["run_day1"]["seconds"], 4),
        "bytes_ratio": round(steps["run_day2"]["bytes_written"] / max(1, steps["run_day1"]["bytes_written"]), 4),
    }
    shutil.rmtree(exported, ignore_errors=True)
    # The same day 1 through the worker-process executor: whole shards in one process per core, each
    # with a TEI client, against the TEI stand-in (answering hash vectors as fast as it can).
    if fraction <= TEI_MAX_FRACTION and not skipped("run_day1_tei_workers"):
        steps["run_day1_tei_workers"] = _tei_day1(folder, env, rows)
    # The same day 1 through `--backend modal` on a Volume store, in the Modal stand-in (cut into many more shards).
    if fraction <= VOLUME_MAX_FRACTION and not skipped(VOLUME_STEP):
        steps[VOLUME_STEP] = _volume_day1(folder, env, corpus["articles"], volume_shards)
    failed = {name: step.get("output_tail") for name, step in steps.items() if step.get("rc") not in (None, 0)}
    if failed:
        raise SystemExit(f"steps failed at fraction {fraction}: {failed}")
    return {
        "fraction": fraction, "index_form": index_form, "articles": corpus["articles"], "chars": corpus["chars"], "chunks": chunks,
        "shards": len(summary["plan"]["shards"]), "data_bytes": data_bytes, "corpus": corpus,
        "steps": steps, "search": search, "resume": resume, "incremental": incremental,
    }


def _upload_only(store: Path) -> dict[str, Any]:
    """`upload` of an existing store (its published generation) to a Hub stand-in spooling next to it."""
    sys.path.insert(0, str(ROOT))
    from tests.standins.hub_server import HubServer

    spool = store.parent / "hub-lfs-upload"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(PYTHONPATH=str(ROOT), HF_TOKEN="hf_test_token", HF_HUB_DISABLE_XET="1")
    try:
        with HubServer(spool=spool) as hub:
            env["HF_ENDPOINT"] = hub.url
            out = _step(_cli("upload", "--store", str(store), "--to", "hub:alice/scale-upload"), env, [store])
            out["hub_bytes"] = hub.lfs_bytes
            out["data_bytes"] = sum(p.stat().st_size for p in (store / "data").glob("*.parquet"))
            return out
    finally:
        shutil.rmtree(spool, ignore_errors=True)


@contextlib.contextmanager
def _tei_server(env: dict[str, str]) -> Iterator[str]:
    """The TEI stand-in in its own process (answering hash vectors as fast as it can); yields its URL."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tests.standins.tei_server", "--port", str(port), "--model-id",
                               "sentence-transformers/all-MiniLM-L6-v2", "--max-client-batch-size", "256",
                               "--max-batch-tokens", "65536"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)


def _tei_day1(folder: Path, env: dict[str, str], rows: list[str]) -> dict[str, Any]:
    try:
        with _tei_server(env) as url:
            store = folder / "store-tei"
            return _step(_cli("run", "--source", str(folder / "day1.parquet"), "--store", str(store), "--backend", "tei",
                              "--tei-url", url, *rows), env, [store])
    finally:
        shutil.rmtree(folder / "store-tei", ignore_errors=True)


def _volume_day1(folder: Path, env: dict[str, str], articles: int, shards: int) -> dict[str, Any]:
    """Day 1's source through `--backend modal` on a `modal:` Volume store, in the Modal stand-in
    (tests/standins/modal_cloud.py: the real CLI and flow, containers as subprocesses running the real
    store operations over an emulated Volume, embedding with the TEI stand-in), cut into at least
    `shards` shards. Besides `_step`'s figures (bytes and files under the emulated Volume's folder):
    the shards, the Volume's files and bytes at the end, its commits and reloads (with the seconds the
    stand-in spent copying: its own cost, not Modal's), and the largest request + answer of any call."""
    from tests.standins.modal_cloud import CloudDir

    top = folder / "modal-cloud"
    shutil.rmtree(top, ignore_errors=True)
    cloud = CloudDir(top)
    shard_rows = max(1, articles // shards)
    try:
        with _tei_server(env) as url:
            cloud.configure({"TEIShards": {"backend": "tei", "tei_url": [url]}}, max_containers=VOLUME_CONTAINERS)
            out = _step([sys.executable, "-m", "tests.standins.modal_cloud", str(cloud.path), "--", "run",
                         "--source", str(folder / "day1.parquet"), "--store", f"modal:{cloud.volume_name}/scale", "--backend", "modal",
                         "--shard-rows", str(shard_rows), "--precision", "float32,int8"], env, [cloud.committed])
        store = cloud.store("scale")
        on_volume = [p for p in cloud.committed.rglob("*") if p.is_file() and not p.is_symlink()]
        calls, ops = cloud.calls(), cloud.volume_ops()
        shard_calls = [c for c in calls if c["method"] == "run_shard"]
        out.update({
            "containers": VOLUME_CONTAINERS, "shard_rows": shard_rows, "shards": _planned_shards(store),
            "shards_done": len(list(store.glob("gens/*/_done/*.json"))),
            "volume_files": len(on_volume), "volume_bytes": sum(p.stat().st_size for p in on_volume),
            "commits": sum(o["op"] == "commit" for o in ops), "reloads": sum(o["op"] == "reload" for o in ops),
            "commit_seconds": round(sum(o["seconds"] for o in ops if o["op"] == "commit"), 2),
            "reload_seconds": round(sum(o["seconds"] for o in ops if o["op"] == "reload"), 2),
            "calls": len(calls), "shard_calls": len(shard_calls),
            "call_max_bytes": max((c["bytes_out"] + c["bytes_in"] for c in calls), default=0),
            "shard_call_max_bytes": max((c["bytes_out"] + c["bytes_in"] for c in shard_calls), default=0),
            "calls_bytes": sum(c["bytes_out"] + c["bytes_in"] for c in calls),
            "call_max_bytes_by_method": {m: max(c["bytes_out"] + c["bytes_in"] for c in calls if c["method"] == m)
                                         for m in sorted({c["method"] for c in calls})},
        })
        if out["shards"]:
            out["seconds_per_shard"] = round(out["seconds"] / out["shards"], 3)
        # Shards a second over the first and the second half of them (their markers' times): a rate that
        # falls as the Volume fills is a cost that grows with the files already there.
        done = sorted(p.stat().st_mtime for p in store.glob("gens/*/_done/*.json"))
        if len(done) >= 4:
            half = len(done) // 2
            out["shards_per_s_halves"] = [round(half / max(done[half - 1] - done[0], 1e-9), 2),
                                          round((len(done) - half) / max(done[-1] - done[half - 1], 1e-9), 2)]
        return out
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _only_volume(work: Path, fraction: float, env: dict[str, str], shards: int) -> dict[str, Any]:
    """One size with only the Volume-store step (its corpus made, or reused from the work folder)."""
    folder = work / f"f{fraction:g}"
    folder.mkdir(parents=True, exist_ok=True)
    corpus = _write_corpus(folder, fraction)
    print(f"[scale] {fraction:g}: {corpus['articles']:,} articles, {corpus['chars']:,} chars ({corpus['seconds']} s)", flush=True)
    step = _volume_day1(folder, env, corpus["articles"], shards)
    if step.get("rc") != 0:
        raise SystemExit(f"{VOLUME_STEP} failed at fraction {fraction}: {step.get('output_tail')}")
    return {"fraction": fraction, "only": VOLUME_STEP, "articles": corpus["articles"], "chars": corpus["chars"], "corpus": corpus,
            "shards": step["shards"], "steps": {VOLUME_STEP: step}}


def _chunk_texts(store: Path, multiset: bool = False) -> Any:
    """The chunk texts of a store's published data files, as a set (or, with `multiset`, a list)."""
    import pyarrow.parquet as pq

    out: list[bytes] = []
    for p in sorted((store / "data").glob("*.parquet")):
        for batch in pq.ParquetFile(p).iter_batches(columns=["text"], batch_size=65_536):
            out.extend(hashlib.blake2b(t.encode(), digest_size=16).digest() for t in batch.column(0).to_pylist())
    return out if multiset else set(out)


def _exponents(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    if len(sizes) < 2:
        return {}
    a, b = sizes[-2], sizes[-1]
    scale = math.log(b["chars"] / a["chars"])
    out = {}
    for name, step in b["steps"].items():
        before = a["steps"].get(name, {})
        if "seconds" not in step or "seconds" not in before:
            continue
        grow = {}
        for key, field in (("seconds", "seconds"), ("bytes", "bytes_written")):
            x, y = before.get(field) or 0, step.get(field) or 0
            grow[key] = round(math.log(y / x) / scale, 3) if x > 0 and y > 0 else None
        out[name] = grow
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect_server(work: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    env = dict(os.environ, PREFECT_HOME=str(work / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_LOGGING_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("prefect server did not start within 180 s")


# The GPU side of a projection: the engine's MiniLM-shape kernels measured on one H100 (bf16,
# length-sorted 64k-token batches, pre-tokenized, eager; docs/PERFORMANCE.md's anchors), and Modal's
# published A10G figure for TEI (wikiembed/data/rates.toml). Not measured here: the projection says so.
GPU_RATES = {"H100 engine kernels (MiniLM, eager)": 30.6e6, "A10G TEI (Modal's write-up)": 217e3}


def report(result: dict[str, Any]) -> str:
    """docs/SCALE.md from a `bench/scale.py` JSON: the measured table per size, the exponents, the
    incremental day, and the projection to all of English Wikipedia."""
    sizes = result["sizes"]
    lines = [
        "# All of English Wikipedia, by simulation",
        "",
        "Every step of a run but the model's arithmetic, measured at fractions of English Wikipedia's 19.56 billion",
        "characters with `bench/scale.py` (the engine returns a digest projection per chunk; everything else is the",
        f"real `wikiembed` command). Measured {result['date']} on {result['machine']} with",
        f"`{result['command']}`; the corpus is the built-in sample's generator (Simple English lengths: about",
        "2.8 times English Wikipedia's article count at the same characters, so per-article costs are overstated).",
        "Back to the [README](../README.md); the store's design for incremental runs is in [STORE.md](STORE.md).",
        "",
        *([result["note"], ""] if result.get("note") else []),
    ]
    for size in sizes:
        lines += [
            f"## {size['fraction']:g} of English Wikipedia: {size['articles']:,} articles, {size['chars']:,} characters, "
            f"{size['chunks']:,} chunks, {size['shards']} shards",
            "",
            "| step | seconds | flow peak RSS (MB) | workers' peak RSS (MB) | bytes written | files created |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, step in size["steps"].items():
            if "seconds" not in step:
                lines.append(f"| {name} | {step.get('skipped', 'not run')} | | | | |")
                continue
            lines.append(f"| {name} | {step['seconds']:.1f} | {step['peak_rss_mb']:.0f} | {step['workers_peak_rss_mb']:.0f} | "
                         f"{step['bytes_written']:,} | {step['files']:,} |")
        search, resume, inc = size.get("search", {}), size["resume"], size["incremental"]
        lines += [
            "",
            f"- search, warm, in one process: exact scan of 1 query {search.get('exact_1_s', float('nan')):.3f} s, of 100 queries "
            f"{search.get('exact_100_s', float('nan')):.3f} s; through the index p50 {search.get('index_p50_ms', float('nan'))} ms, "
            f"p99 {search.get('index_p99_ms', float('nan'))} ms per query, 100 at once {search.get('index_100_s', float('nan')):.3f} s",
            f"- status --verify read {size['steps']['status_verify'].get('read_mb_s')} MB/s; a plain read of the same files "
            f"{size['steps']['status_verify'].get('plain_read_mb_s')} MB/s (both from disk: the files' pages dropped first)",
            f"- resume after SIGKILL: {resume.get('shards_done_at_kill')} shards done at the kill, {resume.get('redone')} redone; "
            f"the first new shard began {resume.get('seconds_to_first_shard')} s after the restart",
            f"- day 2 ({inc.get('changes')}): {inc.get('reembedded_chunks')} chunks embedded, {inc.get('changed_chunks_expected')} "
            f"counted from the outputs; seconds {inc.get('seconds_ratio'):.1%} and bytes written {inc.get('bytes_ratio'):.1%} of day 1",
            "",
        ]
    if result.get("exponents"):
        a, b = sizes[-2]["fraction"], sizes[-1]["fraction"]
        lines += [f"## Growth between {a:g} and {b:g} (exponent of seconds and bytes against characters; 1 is linear)", "",
                  "| step | seconds | bytes |", "| --- | ---: | ---: |"]
        for name, grow in result["exponents"].items():
            lines.append(f"| {name} | {grow['seconds'] if grow['seconds'] is not None else '-'} | "
                         f"{grow['bytes'] if grow['bytes'] is not None else '-'} |")
        lines.append("")
    last = sizes[-1]
    scale = ENWIKI_CHARS / last["chars"]
    day1 = last["steps"]["run_day1"]
    cpu_rate = last["chars"] / day1["seconds"]
    lines += [
        "## Projected to all of English Wikipedia (not measured)",
        "",
        f"Linear from the largest size measured (x{scale:,.0f}): {last['chunks'] * scale / 1e6:,.1f} million chunks, "
        f"{last['data_bytes'] * scale / 1e9:,.1f} GB of data files, {last['shards'] * scale:,.0f} shards at the default shard size.",
        f"The CPU side of day 1 ran at {cpu_rate / 1e6:.2f}M characters/s on this machine (2 cores: snapshot, chunking,",
        "writes, markers; the engine free). A GPU machine runs the two sides at the same time, so a day 1 takes about the",
        "longer of the two:",
        "",
        "| GPU side | GPU hours for 19.56 B chars | one machine, wall (CPU side at this machine's rate) |",
        "| --- | ---: | ---: |",
    ]
    for name, rate in GPU_RATES.items():
        lines.append(f"| {name}: {rate / 1e6:g}M chars/s | {ENWIKI_CHARS / rate / 3600:,.1f} | "
                     f"{max(ENWIKI_CHARS / rate, ENWIKI_CHARS / cpu_rate) / 3600:,.1f} h |")
    inc = last["incremental"]
    files = sum(s.get("files", 0) for s in (last["steps"]["run_day1"],))
    lines += [
        "",
        f"On Modal, each container runs the CPU side of its shards next to the Volume, so at N containers the CPU side is",
        f"N times this machine's (more with more cores a container): day 1 at 10 containers about "
        f"{ENWIKI_CHARS / (10 * cpu_rate) / 60:,.0f} min, at 100 about {ENWIKI_CHARS / (100 * cpu_rate) / 60:,.0f} min, or the",
        "GPU side's time where that is longer. Volume: day 1 writes "
        f"{day1['bytes_written'] * scale / 1e9:,.0f} GB in {files * scale:,.0f} files (snapshot, chunk and data files, markers; one",
        f"commit a shard); day 2 writes {inc['bytes_ratio']:.1%} of that. The Hub gets the export: "
        f"{last['data_bytes'] * scale / (300e6):,.0f} files of about 300 MB.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--report":
        out = Path(sys.argv[3]) if len(sys.argv) > 3 else ROOT / "docs" / "SCALE.md"
        out.write_text(report(json.loads(Path(sys.argv[2]).read_text())) + "\n")
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--as-cli":
        sys.exit(_as_cli(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "--as-search":
        print(json.dumps(_search_figures(*sys.argv[2:4])))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--upload":
        print(json.dumps(_upload_only(Path(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", default="0.001,0.01,0.1", help="fractions of English Wikipedia's characters")
    parser.add_argument("--smoke", action="store_true", help=f"one tiny size ({SMOKE_FRACTION} with {SMOKE_SHARD_ROWS}-row shards)")
    parser.add_argument("--shard-rows", type=int, help="shard size (default: the store's default, as a user's run)")
    parser.add_argument("--work", help="work folder (default: a temp dir, removed after)")
    parser.add_argument("--skip", default="", help="steps not to run, comma-separated: index (an HNSW build of digest vectors, "
                        "which are as hard to index as random ones: far slower than real embeddings), status, status_verify, "
                        "export, search_1, search_1_exact, search (the warm in-process figures), eval_sample, upload, "
                        f"run_day1_tei_workers, {VOLUME_STEP}; day 1 and day 2 always run")
    parser.add_argument("--only", choices=[VOLUME_STEP], help="run only this step at each size (on the size's corpus, "
                        "reused from --work where it is there), and write its own JSON")
    parser.add_argument("--volume-shards", type=int, help=f"the least shards of {VOLUME_STEP} (default {VOLUME_SHARDS}; "
                        f"{SMOKE_VOLUME_SHARDS} with --smoke)")
    parser.add_argument("--index-form", default="float32", help="the stored form `index` and the searches use: float32, or int8 "
                        "(written by every size's run; its graph builds about 5x faster here)")
    parser.add_argument("--day2-times", type=float, default=1.0, help="day 2's rates of edited, added and removed articles "
                        f"times this ({DAY2} at 1)")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    if not 0 < args.day2_times * (DAY2["edited"] + DAY2["removed"]) <= 1:
        parser.error(f"--day2-times {args.day2_times:g}: pass a number above 0 and at most "
                     f"{1 / (DAY2['edited'] + DAY2['removed']):g} (day 2 edits or removes at most every article)")
    day2 = {change: rate * args.day2_times for change, rate in DAY2.items()}
    fractions = [SMOKE_FRACTION] if args.smoke else [float(f) for f in args.fractions.split(",")]
    shard_rows = SMOKE_SHARD_ROWS if args.smoke else args.shard_rows
    volume_shards = args.volume_shards or (SMOKE_VOLUME_SHARDS if args.smoke else VOLUME_SHARDS)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="wikiembed-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from tests.standins.hub_server import HubServer

    # A Prefect server of its own, unless one is named (PREFECT_API_URL: the test suite's).
    server, api = (None, os.environ["PREFECT_API_URL"]) if os.environ.get("PREFECT_API_URL") else _prefect_server(work)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=api, PREFECT_HOME=str(work / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_LOGGING_LEVEL="WARNING", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    result: dict[str, Any] = {
        "kind": "scale",
        "command": "python bench/scale.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "enwiki_chars": ENWIKI_CHARS,
        "day2_changes": day2,
        "sizes": [],
    }
    try:
        with HubServer(spool=work / "hub-lfs") as hub:
            for fraction in sorted(fractions):
                if args.only:
                    result["sizes"].append(_only_volume(work, fraction, env, volume_shards))
                    Path(args.json).write_text(json.dumps(result, indent=1))
                    continue
                size = _size(work, fraction, env, shard_rows, hub, frozenset(x for x in args.skip.split(",") if x), args.index_form,
                             volume_shards, day2)
                result["sizes"].append(size)
                result["exponents"] = _exponents(result["sizes"])
                result["incremental"] = size["incremental"]
                Path(args.json).write_text(json.dumps(result, indent=1))
                print(f"[scale] {fraction:g} done: " + ", ".join(f"{k} {v.get('seconds', '-')}s" for k, v in size["steps"].items()), flush=True)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
        shutil.rmtree(work / "hub-lfs", ignore_errors=True)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
