"""The Prefect flows: `embed-dataset` (download → shard → embed → checkpoint → export)
and `rerun-shards` (re-embed chosen or failed shards with the store's settings).

Tasks here are thin wrappers over the plain functions in `tasks/`; they take
references (store path, generation, shard id), never models or data. Shards
already done (marker matches file) are never submitted, so a resumed run
costs one listing of `_done/`. Embed results are cached by shard content +
model + chunking (not the run id) and persisted, so a flow run retried from
the UI also reuses finished shards.

Touches: the run store, Prefect's API (task runs, artifacts), the backend.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any, Literal

from prefect import flow, get_run_logger, tags, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.context import TaskRunContext
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from flows.progress import Progress
from tasks.checkpoint import embed_shard
from tasks.embed import open_backend
from tasks.errors import BackendError, InputError, StoreError, TransientBackendError
from tasks.plan import VectorIndex, prepare, promote
from tasks.settings import DEFAULT_SHARD_ROWS, RunSettings
from tasks.shard import chunk_shard
from tasks.store import Store

# Shards in flight at once. Local: 2 = one shard chunking on the CPU while the
# engine embeds another. TEI/Modal: enough to keep remote GPUs busy; Prefect's
# thread pool is unbounded by default, so it is always set.
LOCAL_CONCURRENCY = 2
REMOTE_CONCURRENCY = 16
# Each shard in flight holds two pool threads (its shard task and its embed task).
MAX_CONCURRENCY = 100
EMBED_RETRIES = 3


def _retry_transient(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's hook signature
    """Retry what can heal (timeouts, 429/503, dropped connections, a store hiccup); not a bad
    input or a backend that answered "invalid", which would fail the same way again."""
    try:
        state.result()
    except TransientBackendError:
        return True
    except (InputError, BackendError):
        return False
    except Exception:  # noqa: BLE001 - unknown errors get the benefit of the doubt
        return True
    return False


def _embed_cache_key(context: TaskRunContext, params: dict[str, Any]) -> str:
    """Shard content + model + chunking + where it goes: never the run id."""
    h = hashlib.sha256()
    for part in (params["store"], params["gen"], params["shard"], params["chunk_info"]["sha256"], params["model_key"]):
        h.update(str(part).encode())
    return "wikiembed-embed-" + h.hexdigest()


@task(name="download", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_retry_transient)
def download_task(settings: RunSettings) -> dict[str, Any]:
    """Fingerprint the source; snapshot it and write the plan if it is new."""
    prepared = prepare(settings)
    return {
        "store": str(prepared.store.root),
        "gen": prepared.store.gen,
        "previous_gen": prepared.previous_gen,
        "resumed": prepared.resumed,
    }


@task(name="shard", retries=2, retry_delay_seconds=[2, 10], task_run_name="shard-{shard:05d}", retry_condition_fn=_retry_transient)
def shard_task(store: str, gen: str, shard: int) -> dict[str, Any]:
    """Write `chunks/NNNNN.parquet` for one shard."""
    s = Store(store, gen)
    return chunk_shard(s, shard, s.read_manifest())


@task(
    name="embed",
    retries=EMBED_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_transient,
    cache_key_fn=_embed_cache_key,
    persist_result=True,
    task_run_name="embed-{shard:05d}",
)
def embed_task(
    store: str,
    gen: str,
    shard: int,
    chunk_info: dict[str, Any],
    model_key: str,
    backend_opts: dict[str, Any],
    reuse_gen: str | None = None,
) -> dict[str, Any]:
    """Embed one shard's chunks and checkpoint `data/NNNNN.parquet` + `_done/NNNNN.json`."""
    from prefect.runtime import task_run

    s = Store(store, gen)
    manifest = s.read_manifest()
    backend = open_backend(model=manifest["model"]["model_id"], **backend_opts)
    reuse = _reuse_index(store, reuse_gen) if reuse_gen else None
    rows = manifest["plan"]["shards"][shard][1] - manifest["plan"]["shards"][shard][0]
    marker = embed_shard(s, shard, backend, rows, reuse=reuse, progress=Progress.current().add_chunks)
    return {**marker, "attempts": task_run.run_count or 1}


_REUSE: dict[tuple[str, str], VectorIndex] = {}
_REUSE_LOCK = threading.Lock()


def _reuse_index(store: str, gen: str) -> VectorIndex:
    """One index of the published generation per run, shared by the shard tasks (threads)."""
    with _REUSE_LOCK:
        return _REUSE.setdefault((store, gen), VectorIndex(Store(store, gen)))


@task(name="export", retries=2, retry_delay_seconds=[2, 10])
def export_task(store: str, gen: str, upload_to: str | None) -> dict[str, Any]:
    """Write the dataset card, publish a completed next generation, upload if asked."""
    from tasks.upload import publish, write_card

    s = Store(store, gen)
    write_card(s.dir)
    promoted = promote(s)
    published = publish(Store(store).root, upload_to) if upload_to else None
    return {"promoted": promoted, "published": published}


def _backend_opts(settings: RunSettings) -> dict[str, Any]:
    return {
        "backend": settings.backend,
        "device": settings.device,
        "tei_url": tuple(settings.tei_url),
        "modal_app": settings.modal_app,
        "modal_class": settings.modal_class,
        "gpu": settings.gpu,
    }


def _concurrency(settings: RunSettings) -> int:
    if settings.concurrency:
        return settings.concurrency
    if settings.backend == "modal":
        from modal_workers.modal_client import default_concurrency

        return default_concurrency(settings.modal_class)
    return LOCAL_CONCURRENCY if settings.backend == "local" else REMOTE_CONCURRENCY


def _error_text(state) -> str:  # noqa: ANN001
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return f"task ended in state {state.type.value}"


def run_shards(
    store: Store,
    shard_ids: list[int],
    settings: RunSettings,
    *,
    reuse_gen: str | None,
    refresh: bool,
    result_storage: str | None = None,
) -> dict[str, Any]:
    """Submit shard → embed for each shard id; record failures; return per-run counts."""
    logger = get_run_logger()
    manifest = store.read_manifest()
    total = len(manifest["plan"]["shards"])
    opts = _backend_opts(settings)
    model_key = f"{manifest['model']['model_id']}@{manifest['model']['revision']}:{sorted(manifest['chunking'].items())}"
    progress = Progress.start(total=total, done=total - len(shard_ids))
    artifact_id = create_progress_artifact(progress.fraction * 100, key="wikiembed-progress", description=f"shards of {store.root}")
    embed = embed_task.with_options(refresh_cache=True) if refresh else embed_task
    if result_storage:
        # Shared storage (e.g. a remote-file-system block) lets a UI retry on another worker find finished shards.
        embed = embed.with_options(result_storage=result_storage)
    results: dict[int, dict[str, Any]] = {}
    failures: dict[int, str] = {}
    window = min(_concurrency(settings), MAX_CONCURRENCY)
    todo = list(shard_ids)
    inflight: dict[Any, tuple[int, Any]] = {}
    source_tag = manifest["source"]["spec"][:60]
    with tags(f"model:{manifest['model']['model_id']}", f"source:{source_tag}"):
        while todo or inflight:
            while todo and len(inflight) < window:
                k = todo.pop(0)
                chunked = shard_task.submit(str(store.root), store.gen, k)
                inflight[embed.submit(str(store.root), store.gen, k, chunked, model_key, opts, reuse_gen)] = (k, chunked)
            future = next(as_completed(list(inflight)))
            k, chunked = inflight.pop(future)
            future.wait()  # as_completed can yield before the final state is recorded
            state = future.state
            if state.is_completed() and store.read_done(k) is None:
                # A cache hit whose files were removed since: embed it for real.
                future = embed.with_options(refresh_cache=True).submit(
                    str(store.root), store.gen, k, chunked.result(), model_key, opts, reuse_gen
                )
                future.wait()
                state = future.state
            if state.is_completed():
                results[k] = future.result()
            else:
                failures[k] = _error_text(chunked.state if not chunked.state.is_completed() else state)
                logger.error("shard %05d failed: %s", k, failures[k])
                try:
                    store.mark_failed(k, failures[k], attempts=EMBED_RETRIES + 1)
                except StoreError as exc:  # e.g. the disk that failed the shard is full
                    logger.error("could not record the failure of shard %05d: %s", k, exc)
            progress.shard_finished(failed=k in failures)
            update_progress_artifact(artifact_id, progress.fraction * 100)
    progress.close()
    if reuse_gen:
        _REUSE.pop((str(store.root), reuse_gen), None)  # ~24 bytes a chunk: don't keep it in a long-lived worker
    return {"results": results, "failures": failures}


def _summary(store: Store, run: dict[str, Any], seconds: float, retries: int) -> dict[str, Any]:
    manifest = store.read_manifest()
    states = store.states(manifest)
    done = [s for s in states if s.state == "done"]
    results = run["results"].values()
    embedded_chars = sum(r.get("embedded_chars", 0) for r in results)
    return {
        "store": str(store.root),
        "generation": store.gen,
        "shards_total": len(states),
        "shards_done": len(done),
        "shards_failed": sum(s.state == "failed" for s in states),
        "failed_shards": sorted(s.shard for s in states if s.state == "failed"),
        "rows": manifest["plan"]["rows"],
        "skipped_rows": sum(manifest.get("skipped", {}).values()),
        "chunks": sum(s.chunks or 0 for s in done),
        "embedded_chunks": sum(r.get("embedded_chunks", 0) for r in results),
        "reused_chunks": sum(r.get("reused_chunks", 0) for r in results),
        "retries": retries + sum(max(r.get("attempts", 1) - 1, 0) for r in results),
        "seconds": round(seconds, 3),
        "chars_per_s": round(embedded_chars / seconds, 1) if seconds > 0 else 0.0,
    }


def _report(store: Store, summary: dict[str, Any], changes: dict[str, Any] | None = None) -> None:
    """The UI's view of the run: a shard-state table and a markdown summary."""
    states = store.states()
    create_table_artifact(
        [{"shard": s.shard, "state": s.state, "rows": s.rows, "chunks": s.chunks, "error": (s.error or "")[:200]} for s in states],
        key="wikiembed-shards",
        description=f"shard states of {store.root}",
    )
    lines = [
        f"# wikiembed run: {summary['shards_done']}/{summary['shards_total']} shards done",
        "",
        f"- store: `{summary['store']}` (generation `{summary['generation']}`)",
        f"- rows: {summary['rows']:,} ({summary['skipped_rows']:,} skipped)",
        f"- chunks: {summary['chunks']:,} ({summary['embedded_chunks']:,} embedded, {summary['reused_chunks']:,} reused)",
        f"- time: {summary['seconds']:.1f} s, {summary['chars_per_s']:,.0f} chars/s, {summary['retries']} retries",
    ]
    if changes:
        lines.append(
            f"- source changes: {changes['added']} articles added, {changes['edited']} edited, {changes['removed']} removed"
        )
    if summary["failed_shards"]:
        ids = ",".join(str(k) for k in summary["failed_shards"])
        lines += ["", "## Failed shards", ""]
        lines += [f"- {s.shard:05d}: {(s.error or '')[:300]}" for s in states if s.state == "failed"]
        lines += ["", "Rerun them once the cause is fixed:", "", f"    wikiembed rerun --store {summary['store']} --shards {ids}"]
    create_markdown_artifact("\n".join(lines), key="wikiembed-summary", description="run summary")


def _backend_retries(settings: RunSettings, model: str) -> int:
    backend = open_backend(model=model, **_backend_opts(settings))
    return int(getattr(backend, "retries", 0))


def _finish(store: Store, settings: RunSettings, run: dict[str, Any], started: float, changes=None) -> dict[str, Any]:  # noqa: ANN001
    all_done = all(s.state == "done" for s in store.states())
    exported = export_task(str(store.root), store.gen, settings.upload_to if all_done else None) if all_done else None
    if exported and exported["promoted"]:
        store = Store(store.root, store.gen)
    retries = _backend_retries(settings, store.read_manifest()["model"]["model_id"]) if run["results"] else 0
    summary = _summary(store, run, time.perf_counter() - started, retries)
    if changes:
        summary["changes"] = changes
    _report(store, summary, changes)
    return summary


@flow(
    name="embed-dataset",
    flow_run_name="embed {source} into {store}",
    log_prints=True,
    task_runner=ThreadPoolTaskRunner(max_workers=2 * MAX_CONCURRENCY),
)
def embed_dataset(
    source: str = "sample:1000",
    store: str = "runs/sample",
    config: str | None = None,
    split: str = "train",
    limit: int | None = None,
    columns: str | None = None,
    backend: Literal["local", "tei", "modal"] = "local",
    model: str = "sentence-transformers/all-MiniLM-L6-v2",
    device: Literal["cpu", "cuda"] | None = None,
    chunker: Literal["tokens", "chars"] = "tokens",
    chunk_size: int | None = None,
    chunk_overlap: int = 0,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    tei_url: list[str] | None = None,
    modal_app: str | None = None,
    modal_class: Literal["TEI", "Torch"] = "TEI",
    gpu: str | None = None,
    concurrency: int | None = None,
    upload_to: str | None = None,
    result_storage: str | None = None,
) -> dict[str, Any]:
    """Embed a dataset into a run store; resume whatever a previous run left undone.

    `result_storage` names a Prefect filesystem block (e.g. "local-file-system/wikiembed-results")
    for the embed tasks' cached results; by default Prefect's local storage is used.
    """
    given = {k: v for k, v in locals().items() if k != "result_storage"}
    settings = RunSettings(**{k: v for k, v in given.items() if v is not None or k in ("config", "limit")})
    started = time.perf_counter()
    with Store(settings.store).lock():
        planned = download_task(settings)
        s = Store(planned["store"], planned["gen"])
        manifest = s.read_manifest()
        pending = [st.shard for st in s.states(manifest) if st.state != "done"]
        changes = _changes(planned, manifest) if planned["previous_gen"] else None
        run = run_shards(s, pending, settings, reuse_gen=planned["previous_gen"], refresh=False, result_storage=result_storage)
        return _finish(s, settings, run, started, changes)


def _changes(planned: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """Articles added / edited / removed between the published generation and this one."""
    from tasks.plan import diff_generations

    return diff_generations(Store(planned["store"], planned["previous_gen"]), Store(planned["store"], planned["gen"]))


@flow(
    name="rerun-shards",
    flow_run_name="rerun {shards} in {store}",
    log_prints=True,
    task_runner=ThreadPoolTaskRunner(max_workers=2 * MAX_CONCURRENCY),
)
def rerun_shards(
    store: str, shards: list[int] | Literal["failed"] = "failed", result_storage: str | None = None
) -> dict[str, Any]:
    """Re-embed the given shards (or every failed one) with the store's recorded settings."""
    started = time.perf_counter()
    s = Store(store)
    manifest = s.read_manifest()
    total = len(manifest["plan"]["shards"])
    if shards == "failed":
        ids = [st.shard for st in s.states(manifest) if st.state == "failed"]
    else:
        bad = [k for k in shards if not 0 <= int(k) < total]
        if bad:
            raise InputError(f"--shards {bad}: this store has shards 0..{total - 1}; see `wikiembed status --store {store}`.")
        ids = sorted({int(k) for k in shards})
    settings = RunSettings(**manifest["settings"])
    with s.lock():
        for k in ids:
            s.forget(k)
        run = run_shards(
            s, ids, settings, reuse_gen=manifest.get("previous_generation"), refresh=True, result_storage=result_storage
        )
        summary = _finish(s, settings, run, started)
    summary["rerun_shards"] = ids
    return summary


if __name__ == "__main__":
    embed_dataset()
