"""Benchmark: shard-level fan-out to Modal, without Modal: the control plane, the data plane, the traffic.

What it may touch: CPU, a scratch folder (`--workdir`, default a temp dir), one TEI
stand-in server on loopback (`tests/standins/tei_server.py`, in its own process), a
Prefect API (ephemeral unless PREFECT_API_URL is set), and the `--json` file.

Measured here:

- `control_plane_shards_per_s`: the `embed-dataset` flow with `--backend modal` on a
  Volume store, the remote shard function answering at once (`InstantCloud`: the store's
  own operations run in-process on a local folder, a shard writes a one-byte data file and
  its marker). N / (T_run - T_noop): T_run runs N pending shards, T_noop the same command on a
  store of N shards already done (run first), so start-up, planning and export cancel out.
- `noop_resume_10000_shards_s`: `wikiembed run` in a fresh process over a Volume store of
  10,000 done shards: interpreter, Prefect, the store's lease, planning, the state of every
  shard, the export (card, promotion), the report.
- `shard_chars_per_s_per_core`: `wikiembed.store_ops.run_shard` (read the snapshot, token
  chunker, TEI client, parquet + marker) on this machine against the TEI stand-in, which
  answers as fast as it can in another process (it stands for the GPU). Characters of the
  shard's articles / CPU seconds of this process and its tokenizing workers.
- `remote_bytes_per_shard_max`: pickled size of what one shard call sends (store mount
  path, generation, shard id) plus what it gets back (the real marker of the runs above).

Projected (not measured), from those figures and `--gpu-chars-per-s` (the per-GPU embedding
rate; default: the engine anchor measured on an H100, see README):
- `wikipedia_minutes_at_50` / `_at_100`: English Wikipedia's 19.56 billion characters with
  50 / 100 containers. Per container: min(GPU rate, CPU rate of the shard function x the
  shard classes' cores). Wall: container start + the larger of (characters / (containers x
  per-container rate), shards / control-plane rate).

    python bench/fanout.py --json bench/results/fanout.json

`--smoke` runs every step at a few shards (seconds: it checks the script; `noop_resume_10000_shards_s`
is then null, the resume's own shard count and seconds are under `details`).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

WIKIPEDIA_CHARS = 19.56e9  # English Wikipedia, as in Modal's English-Wikipedia embedding example
WIKIPEDIA_SHARD_ROWS = 20_000  # the default --shard-rows: ~6.8M articles -> ~340 shards
WIKIPEDIA_ARTICLES = 6.8e6
CONTAINER_START_S = 120.0  # a cold GPU container with the image cached: order of a minute or two (projection)
SHARD_CPU = 16.0  # cores of a TorchShards container (modal_workers/torch_app.py CPU): the engine path projected here
# The engine on pre-tokenized text, bge-small shape, bf16 + SDPA, eager, one H100 (measured 2026-11-26,
# README, Performance: 16.8M chars/s); TEI on an A10G per Modal's English-Wikipedia embedding example: ~0.2M chars/s.
DEFAULT_GPU_CHARS_PER_S = 16.8e6
# --smoke: two data-plane shards, two control-plane shards, four resumed shards (each a Prefect task run of its own).
SMOKE = {"control_shards": 2, "resume_shards": 4, "articles": 40, "shard_rows": 20}
ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
       "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL", "HF_HUB_OFFLINE": "1",
       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}  # fmt: skip


# ---------------------------------------------------------------------------
# A Modal that answers at once, in-process, over a local folder as the Volume
# ---------------------------------------------------------------------------


class InstantCloud:
    """`modal.Cls.from_name` for the control-plane figures: the real store code, no container, no work;
    `modal.Dict.from_name` for the store's lease: the Modal stand-in's Dict (a file)."""

    def __init__(self, volume_dir: Path) -> None:
        self.volume_dir = volume_dir
        self.shard_calls = 0

    def _local(self, mount_path: str) -> str:
        return str(self.volume_dir / mount_path.removeprefix("/store/"))

    def from_name(self, app_name: str, class_name: str, **_: Any) -> Any:
        cloud = self

        class Obj:
            def __getattr__(self, method: str) -> Any:
                return type("M", (), {"remote": staticmethod(lambda *args: cloud.call(class_name, method, args))})

            def with_options(self, **_: Any) -> "Obj":
                return self

            def __call__(self, **_: Any) -> "Obj":
                return self

        return Obj()

    def call(self, cls: str, method: str, args: tuple) -> Any:
        from wikiembed import store_ops

        if method == "run_shard":
            self.shard_calls += 1
            return instant_shard(self._local(args[0]), args[1], args[2])
        # As the deployed StoreOps answers: a record's JSON.
        if method == "prepare":
            return store_ops.prepare_store({**args[0], "store": self._local(args[0]["store"])}).to_json()
        if method == "view":
            return store_ops.view_store(self._local(args[0]), args[1], with_states=args[2]).to_json()
        if method == "export":
            return store_ops.export_store(self._local(args[0]), *args[1:]).to_json()
        func = {"mark_failed": store_ops.mark_failed, "forget": store_ops.forget}[method]
        return func(self._local(args[0]), *args[1:])

    def install(self) -> None:
        import modal

        from tests.standins.modal_cloud import CloudDict, CloudDir

        modal.Cls.from_name = self.from_name
        # The store's lease (wikiembed.volume_store.VolumeLease) in the stand-in's file-backed Dict.
        dicts = CloudDir(self.volume_dir.parent / f"{self.volume_dir.name}-dicts")
        modal.Dict.from_name = lambda name, create_if_missing=False, **_: CloudDict(dicts, name, create_if_missing)


_ONE_ROW: bytes | None = None
# What a real marker records of the backend's vectors (the export step pins it from the first marker).
_KIND = {"backend": "modal", "model": "sentence-transformers/all-MiniLM-L6-v2", "revision": "bundled", "pooling": "mean",
         "normalize": True, "dtype": "unknown"}  # fmt: skip


def _one_row_file() -> bytes:
    """A valid data file of one chunk (the export step reads every file's schema)."""
    global _ONE_ROW
    if _ONE_ROW is None:
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        from wikiembed.embedding import data_schema

        schema = data_schema(384)
        row = {f.name: [None] for f in schema}
        row.update(id=["0"], url=[""], title=[""], chunk_index=[0], char_start=[0], char_end=[1], text=["x"])
        row["embedding"] = [[0.0] * 384]
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pydict(row, schema=schema), buf)
        _ONE_ROW = buf.getvalue()
    return _ONE_ROW


def instant_shard(root: str, gen: str, shard: int) -> Any:
    """A shard done at once: a one-chunk data file and its marker (a `wikiembed.records.Marker`), as
    `embed_shard` would record them."""
    from wikiembed.embedding import uncompressed_bytes
    from wikiembed.records import Marker
    from wikiembed.store import Store, sha256_file

    store = Store(root, gen)
    path = store.data_path(shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_one_row_file())
    st = path.stat()
    marker = Marker(shard=shard, rows=1, chunks=1, embedded_chunks=1, reused_chunks=0, embedded_chars=1,
                    sha256=sha256_file(path), bytes=st.st_size, arrow_bytes=uncompressed_bytes(path), mtime_ns=st.st_mtime_ns,
                    inode=st.st_ino, model="sentence-transformers/all-MiniLM-L6-v2", seconds=0.0, vectors=_KIND)  # fmt: skip
    store.mark_done(shard, marker)
    return marker


def _env() -> dict[str, str]:
    return {**os.environ, **ENV, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def bare_prefect(n: int) -> float:
    """Prefect's own floor on this machine now: `n` trivial tasks submitted from one flow, as our flow does."""
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    @task
    def nothing(k: int) -> int:
        return k

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=200))
    def bare(n: int) -> None:
        futures = [nothing.submit(k) for k in range(n)]
        for f in futures:
            f.result()

    t0 = time.perf_counter()
    bare(n)
    return time.perf_counter() - t0


def control_plane(work: Path, shards: int) -> dict[str, float]:
    os.environ.update(ENV)
    cloud = InstantCloud(work / "cp-volume")
    cloud.install()
    from wikiembed import store_ops
    from wikiembed.flows.embed_dataset import embed_dataset

    embed_dataset(source="sample:2", store="modal:wikiembed-store/warm-up", shard_rows=1, backend="modal")  # Prefect's start
    plan = {"source": f"sample:{shards}", "shard_rows": 1}
    # The no-op run goes first, over a store whose shards were written directly (no Prefect), so it
    # does not queue behind an API server still recording a real run's task runs and events.
    done = store_ops.prepare_store({**plan, "store": str(cloud.volume_dir / "cp-done")})
    for k in range(shards):
        instant_shard(done.store, done.gen, k)
    t0 = time.perf_counter()
    again = embed_dataset(**plan, store="modal:wikiembed-store/cp-done", backend="modal")
    t_noop = time.perf_counter() - t0
    t0 = time.perf_counter()
    first = embed_dataset(**plan, store="modal:wikiembed-store/cp", backend="modal")
    t_run = time.perf_counter() - t0
    assert first["shards_done"] == again["shards_done"] == shards and cloud.shard_calls == shards + 2, (first, again)
    t_bare = bare_prefect(shards)
    # Should the no-op run still not be clearly shorter, there is no difference to divide by: fall
    # back to the whole run, start-up and export included (a floor).
    marginal = t_run - t_noop > 0.2 * t_run
    return {"shards": shards, "run_s": round(t_run, 2), "noop_s": round(t_noop, 2),
            "shards_per_s": round(shards / (t_run - t_noop if marginal else t_run), 1),
            "shards_per_s_method": "run - no-op run" if marginal else "whole run (the no-op run took too long to subtract)",
            "bare_prefect_tasks_per_s": round(shards / t_bare, 1)}  # fmt: skip


def noop_resume(work: Path, shards: int) -> dict[str, float]:
    """A Volume store of `shards` done shards, then `wikiembed run` in a fresh process over it."""
    from wikiembed import store_ops

    volume = work / "resume-volume"
    planned = store_ops.prepare_store({"source": f"sample:{shards}", "store": str(volume / "big"), "shard_rows": 1})
    for k in range(shards):
        instant_shard(planned.store, planned.gen, k)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--driver", str(volume), "--", "run", "--source", f"sample:{shards}",
           "--store", "modal:wikiembed-store/big", "--shard-rows", "1", "--backend", "modal"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"no-op resume failed:\n{proc.stderr[-3000:]}")
    return {"shards": shards, "seconds": round(seconds, 2)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree_cpu_s(exclude: int | None = None) -> float:
    """CPU seconds of this process and its children (the tokenizing workers), `exclude`'s tree left out."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            if child.pid == exclude or (exclude is not None and child.ppid() == exclude):
                continue
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def data_plane(work: Path, articles: int, shard_rows: int) -> dict[str, Any]:
    """run_shard on every shard of `sample:articles`, the TEI stand-in answering from its own process."""
    import pyarrow.parquet as pq

    from wikiembed import store_ops
    from wikiembed.backends.factory import BackendOptions
    from wikiembed.model import DEFAULT_MODEL
    from wikiembed.store import Store

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.standins.tei_server", "--port", str(port), "--model-id", DEFAULT_MODEL,
         "--max-client-batch-size", "256", "--max-batch-tokens", "1000000"],  # fmt: skip
        cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        planned = store_ops.prepare_store({"source": f"sample:{articles}", "store": str(work / "data-plane"), "shard_rows": shard_rows})
        root, gen = planned.store, planned.gen
        store = Store(root, gen)
        snapshot = pq.read_table(store.snapshot_path, columns=["text"]).column("text").to_pylist()
        plan = store.read_manifest().plan.shards
        opts = BackendOptions("tei", tei_url=(url,))
        for _ in range(100):  # wait for the server, then warm up: tokenizer, worker pool, connections
            try:
                store_ops.run_shard(root, gen, 0, opts)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.2)
        store.forget(0)
        # Where the shard function's CPU goes: the token chunker alone, over the same shards.
        from wikiembed.chunking import chunk_shard

        manifest = store.read_manifest()
        cpu0 = _tree_cpu_s(server.pid)
        for k in range(len(plan)):
            chunk_shard(store, k, manifest)
        chunk_cpu = _tree_cpu_s(server.pid) - cpu0
        chars, bytes_max, markers = 0, 0, []
        cpu0, t0 = _tree_cpu_s(server.pid), time.perf_counter()
        for k, (start, end) in enumerate(plan):
            marker = store_ops.run_shard(root, gen, k, opts)
            chars += sum(len(t) for t in snapshot[start:end])
            bytes_max = max(bytes_max, len(pickle.dumps(("/store/enwiki", gen, k))) + len(pickle.dumps(marker)))
            markers.append(marker)
        wall, cpu = time.perf_counter() - t0, _tree_cpu_s(server.pid) - cpu0
        # The floor under any token chunker: the bare tokenizer over the same articles, CPU seconds
        # of its own threads (this process only: encode_batch runs on the tokenizer's thread pool).
        from wikiembed.model import load_tokenizer

        tokenizer = load_tokenizer(DEFAULT_MODEL)
        own0 = sum(os.times()[:2])
        tokenizer.encode_batch(snapshot, add_special_tokens=False)
        tokenizer_cpu = sum(os.times()[:2]) - own0
    finally:
        server.terminate()
        server.wait()
    return {"articles": articles, "shards": len(plan), "chars": chars, "chunks": sum(m.chunks for m in markers),
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "chars_per_s_wall": round(chars / wall),
            "chars_per_s_per_core": round(chars / cpu), "chunker_cpu_s": round(chunk_cpu, 2),
            "chunker_share_of_cpu": round(chunk_cpu / cpu, 2), "remote_bytes_per_shard_max": bytes_max,
            "tokenizer_chars_per_s_per_core": round(chars / tokenizer_cpu)}  # fmt: skip


def project(per_core: float, shards_per_s: float, gpu_chars_per_s: float, containers: int) -> float:
    per_container = min(gpu_chars_per_s, per_core * SHARD_CPU)
    shards = WIKIPEDIA_ARTICLES / WIKIPEDIA_SHARD_ROWS
    work = WIKIPEDIA_CHARS / (containers * per_container)
    # A container does whole shards: the last wave waits for the slowest, so round the waves up.
    waves = -(-shards // containers)
    work = max(work, waves * (WIKIPEDIA_CHARS / shards) / per_container)
    return (CONTAINER_START_S + max(work, shards / shards_per_s)) / 60


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--driver"]:  # the CLI in this process, against InstantCloud (for the resume figure)
        os.environ.update(ENV)
        InstantCloud(Path(argv[1])).install()
        from wikiembed.flows.cli import main as cli_main

        return cli_main(argv[argv.index("--") + 1 :])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True)
    p.add_argument("--workdir")
    p.add_argument("--control-shards", type=int, default=500)
    p.add_argument("--resume-shards", type=int, default=10_000)
    p.add_argument("--articles", type=int, default=6000)
    p.add_argument("--shard-rows", type=int, default=2000)
    p.add_argument("--gpu-chars-per-s", type=float, default=DEFAULT_GPU_CHARS_PER_S)
    p.add_argument("--smoke", action="store_true", help=f"every step at a few shards: {SMOKE}")
    args = p.parse_args(argv)
    if args.smoke:
        vars(args).update(SMOKE)
    load_at_start = [round(x, 2) for x in os.getloadavg()]  # other work on the machine (1, 5, 15 min)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="wikiembed-fanout-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = data_plane(work, args.articles, args.shard_rows)
        print(f"data plane: {data}", flush=True)
        cp = control_plane(work, args.control_shards)
        print(f"control plane: {cp}", flush=True)
        resume = noop_resume(work, args.resume_shards)
        print(f"no-op resume: {resume}", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_start": load_at_start, "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},  # fmt: skip
        "control_plane_shards_per_s": cp["shards_per_s"],
        "noop_resume_10000_shards_s": resume["seconds"] if args.resume_shards == 10_000 else None,
        "shard_chars_per_s_per_core": data["chars_per_s_per_core"],
        "tokenizer_chars_per_s_per_core": data["tokenizer_chars_per_s_per_core"],
        "shard_vs_tokenizer_per_core": round(data["chars_per_s_per_core"] / data["tokenizer_chars_per_s_per_core"], 3),
        "remote_bytes_per_shard_max": data["remote_bytes_per_shard_max"],
        "wikipedia_minutes_at_50": round(project(data["chars_per_s_per_core"], cp["shards_per_s"], args.gpu_chars_per_s, 50), 1),
        "wikipedia_minutes_at_100": round(project(data["chars_per_s_per_core"], cp["shards_per_s"], args.gpu_chars_per_s, 100), 1),
        "projection_inputs": {"gpu_chars_per_s": args.gpu_chars_per_s, "shard_cpu": SHARD_CPU,
                              "container_start_s": CONTAINER_START_S, "wikipedia_chars": WIKIPEDIA_CHARS,
                              "wikipedia_shards": WIKIPEDIA_ARTICLES / WIKIPEDIA_SHARD_ROWS},  # fmt: skip
        "details": {"data_plane": data, "control_plane": cp, "noop_resume": resume},
        "command": "python bench/fanout.py " + " ".join(argv),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("details", "machine")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
