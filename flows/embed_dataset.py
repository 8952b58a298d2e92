"""The Prefect flows: `embed-dataset` (download → shard → embed → checkpoint → export)
and `rerun-shards` (re-embed chosen or failed shards with the store's settings).

The tasks are in `tasks/`, one module per step; this module wires them together,
keeps shards in flight, and reports to the UI. Shards already done (marker
matches file) are never submitted, so a resumed run, or a flow run retried from
the UI, costs one listing of `_done/`.

What the UI shows is the truth about the run: a flow run is Completed only when
every shard is done, and otherwise Failed with a message that gives the count,
the cause and the rerun; its name and tags say what ran (source, model,
backend); its log has the plan and one line per shard; its artifacts are keyed
per store. The flow's parameters are RunSettings' fields (wikiembed/settings.py).

Touches: the run store, Prefect's API (task runs, artifacts), the backend.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import shlex
import sys
import time
from typing import Any, Callable

from prefect import flow, get_client, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.context import FlowRunContext
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from wikiembed import fast_tokenizer, shard_workers
from wikiembed.backends.factory import backend_retries, open_backend
from wikiembed.calibration import needs_calibration
from wikiembed.checkpoint import record_vector_kind
from wikiembed.errors import BackendError, InputError, ShardsFailed, StoreError, TransientBackendError, WikiembedError
from wikiembed.estimate import compare, markdown as estimate_markdown, one_line, run_hardware, store_estimate
from wikiembed.index import require_library
from wikiembed.model import load_tokenizer, model_info
from wikiembed import reuse_index
from wikiembed.plan import check_snapshot
from wikiembed.progress import Progress
from wikiembed.settings import RunSettings, ShardSelection, parse_shards
from wikiembed.store import ShardState, Store
from wikiembed.tasks.calibrate import calibrate_remote_task, calibrate_task
from wikiembed.tasks.download import download_task
from wikiembed.tasks.embed import embed_remote_task, embed_task, embed_worker_task
from wikiembed.tasks.evaluate import eval_task
from wikiembed.tasks.export import export_task
from wikiembed.tasks.index import index_task
from wikiembed.tasks.retry import attempts_of
from wikiembed.tasks.shard import shard_task
from wikiembed.tokenizing import cores
from wikiembed.volume_store import VolumeStore, check_store_for_backend, open_store

# Shards in flight at once. Local: 2 = one shard chunking on the CPU while the
# engine embeds another. TEI/Modal: enough to keep remote GPUs busy; Prefect's
# thread pool is unbounded by default, so it is always set.
LOCAL_CONCURRENCY = 2
REMOTE_CONCURRENCY = 16
# Each shard in flight holds two pool threads (its shard task and its embed task).
MAX_CONCURRENCY = 100
# The UI's progress artifact is updated at most this often: each update is an API call
# (about a quarter of a second here), which would otherwise cap a run at a few shards a second.
PROGRESS_ARTIFACT_EVERY_S = 2.0


# The deployment of `rerun-shards` in prefect.yaml, named in rerun instructions.
RERUN_DEPLOYMENT = "rerun-shards/wikiembed-rerun"


def _backend_opts(settings: RunSettings) -> dict[str, Any]:
    c = settings.compute
    return {
        "backend": settings.backend,
        "device": None if c.device == "auto" else c.device,  # the engine picks cuda when present
        "tei_url": tuple(c.tei_url),
        "modal_app": c.modal_app,
        "modal_class": c.modal_class,
        "gpu": c.gpu,
        "trust_remote_code": settings.trust_remote_code,
    }


def _concurrency(settings: RunSettings) -> int:
    if settings.compute.concurrency:
        return settings.compute.concurrency
    if settings.backend == "modal":
        # Shards beyond the deployed max_containers wait in Modal's queue at no cost; asking the
        # deployment its size would start a GPU container just to read a number.
        return MAX_CONCURRENCY
    if settings.backend == "tei":
        # Every shard worker busy, with its next shard queued behind it.
        return min(max(REMOTE_CONCURRENCY, 2 * (settings.compute.shard_workers or cores())), MAX_CONCURRENCY)
    return LOCAL_CONCURRENCY


def _record_vector_kind(store: Store, logger) -> None:  # noqa: ANN001
    """Pin the generation's kind of vectors in its manifest; a store that cannot be written (a full
    disk) only delays that: every marker records its kind, and the next run pins it."""
    try:
        record_vector_kind(store)
    except StoreError as exc:
        logger.error("could not record the kind of vectors in the manifest: %s", exc)


def _failure(state) -> tuple[str, int]:  # noqa: ANN001
    """(error text, attempts the task made) of a task that did not complete."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}", attempts_of(exc)
    return f"task ended in state {state.type.value}", 1


def run_shards(
    store: Store | VolumeStore,
    shard_ids: list[int],
    settings: RunSettings,
    *,
    reuse_gen: str | None,
    done_before: int,
    retries_before: int | None = None,
    lease: Any = None,
) -> dict[str, Any]:
    """Submit shard → embed for each shard id; record failures; return per-run counts.

    `done_before`: the store's done shards outside `shard_ids`, where the progress starts (a
    rerun of failed shards in a store with pending ones must not start at 100%).
    `retries_before`: the backend's request-retry count when this run began (before the
    up-front backend check, whose retries belong to this run too). `lease`: the store's lock;
    a Volume store's lease that another run took over (`VolumeLease.lost`) stops this run from
    sending more shards: the shards in flight finish, then the run fails with `StoreError`,
    leaving the store (and its export) to the run that holds it."""
    logger = get_run_logger()
    manifest = store.read_manifest()
    total = len(manifest["plan"]["shards"])
    opts = _backend_opts(settings)
    progress = Progress.start(total=total, done=done_before)
    artifact_id = create_progress_artifact(
        progress.fraction * 100, key=artifact_key("progress", store), description=f"shards of {store.root}"
    )
    artifact_updated = time.monotonic()
    results: dict[int, dict[str, Any]] = {}
    failures: dict[int, str] = {}
    failed_attempts: dict[int, int] = {}
    model = manifest["model"]["model_id"]
    if retries_before is None:
        retries_before = backend_retries(model=model, **opts)
    if isinstance(store, Store):  # on a Volume the export step records it, where the markers are
        _record_vector_kind(store, logger)  # a killed run's markers pin the kind before anything else is embedded
    window = min(_concurrency(settings), MAX_CONCURRENCY)
    workers = settings.compute.shard_workers
    todo = list(shard_ids)
    inflight: dict[Any, tuple[int, Any]] = {}
    finished = 0
    while todo or inflight:
        if todo and getattr(lease, "lost", None) is not None:
            stopped = len(todo)
            todo.clear()
            logger.error("the lease on %s was taken over by another run: %d shard(s) not sent", store.root, stopped)
        while todo and len(inflight) < window:
            k = todo.pop(0)
            if isinstance(store, VolumeStore):  # the whole shard runs where the store is: chunk, embed, checkpoint
                inflight[embed_remote_task.submit(str(store.root), store.gen, k, model, opts)] = (k, None)
                continue
            if settings.backend == "tei":  # the whole shard in a worker process: chunk, embed, checkpoint
                inflight[embed_worker_task.submit(str(store.root), store.gen, k, opts, workers, reuse_gen)] = (k, None)
                continue
            chunked = shard_task.submit(str(store.root), store.gen, k)
            inflight[embed_task.submit(str(store.root), store.gen, k, chunked, opts, reuse_gen)] = (k, chunked)
        future = next(as_completed(list(inflight)))
        k, chunked = inflight.pop(future)
        future.wait()  # as_completed can yield before the final state is recorded
        state = future.state
        finished += 1
        if state.is_completed():
            results[k] = marker = future.result()
            seconds = float(marker.get("seconds") or 0.0)
            logger.info(
                "shard %05d done: %s chunks in %.1f s (%s chunks/s), %d/%d",
                k, f"{marker['chunks']:,}", seconds, f"{marker['chunks'] / seconds:,.0f}" if seconds else "-",
                finished, len(shard_ids),
            )
        else:
            failures[k], failed_attempts[k] = _failure(chunked.state if chunked and not chunked.state.is_completed() else state)
            logger.error(
                "shard %05d failed after %d attempt(s): %s, %d/%d; once the cause is fixed: %s",
                k, failed_attempts[k], failures[k], finished, len(shard_ids), rerun_command(store.root, str(k)),
            )
            try:
                store.mark_failed(k, failures[k], attempts=failed_attempts[k])
            except StoreError as exc:  # e.g. the disk that failed the shard is full
                logger.error("could not record the failure of shard %05d: %s", k, exc)
        progress.shard_finished(failed=k in failures)
        if time.monotonic() - artifact_updated >= PROGRESS_ARTIFACT_EVERY_S or not (todo or inflight):
            update_progress_artifact(artifact_id, progress.fraction * 100)
            artifact_updated = time.monotonic()
    progress.close()
    shard_workers.release()
    if reuse_gen:
        reuse_index.release(str(store.root), reuse_gen)
    if getattr(lease, "lost", None) is not None:
        held = lease.lost
        raise StoreError(
            f"store {store.root}: this run lost its lease (it missed its renewals for {lease.lease_s:.0f} s) and the run "
            f"on host {held.get('host')}, pid {held.get('pid')} took the store over; this run stopped sending shards "
            f"after {len(results) + len(failures)} of {len(shard_ids)} and leaves the store and its export to that run. "
            f"Its finished shards are kept; `wikiembed status --store {shlex.quote(str(store.root))}` shows them once that run ends."
        )
    if results and isinstance(store, Store):
        _record_vector_kind(store, logger)
    # Request-level retries of this run only: the flow's backend is shared by the runs of one
    # process; a shard worker's client reports its shard's retries with the marker.
    request_retries = backend_retries(model=model, **opts) - retries_before
    request_retries += sum(r.get("request_retries", 0) for r in results.values())
    return {"results": results, "failures": failures, "failed_attempts": failed_attempts, "request_retries": request_retries}


def _summary(
    store: Store | VolumeStore, settings: RunSettings, run: dict[str, Any], seconds: float, device: str, states: list[ShardState]
) -> dict[str, Any]:
    manifest = store.read_manifest()
    done = [s for s in states if s.state == "done"]
    results = run["results"].values()
    embedded_chars = sum(r.get("embedded_chars", 0) for r in results)
    return {
        "store": str(store.root),
        "generation": store.gen,
        "source": source_label(settings.source, settings.config),
        "model": manifest["model"]["model_id"],
        "revision": manifest["model"]["revision"],
        "backend": settings.backend,
        "device": device,
        "chunking": manifest["chunking"],
        "tokenizer": _tokenizer_name(settings, manifest),
        "shards_total": len(states),
        "shards_done": len(done),
        "shards_failed": sum(s.state == "failed" for s in states),
        "failed_shards": sorted(s.shard for s in states if s.state == "failed"),
        "pending_shards": sorted(s.shard for s in states if s.state == "pending"),
        "rows": manifest["plan"]["rows"],
        "skipped_rows": sum(manifest.get("skipped", {}).values()),
        "chunks": sum(s.chunks or 0 for s in done),
        "embedded_chunks": sum(r.get("embedded_chunks", 0) for r in results),
        "reused_chunks": sum(r.get("reused_chunks", 0) for r in results),
        # Measured: retried requests inside the backend, plus retried task runs of done and failed shards.
        "retries": run.get("request_retries", 0)
        + sum(max(r.get("attempts", 1) - 1, 0) for r in results)
        + sum(a - 1 for a in run.get("failed_attempts", {}).values()),
        "seconds": round(seconds, 3),
        "chars_per_s": round(embedded_chars / seconds, 1) if seconds > 0 else 0.0,
    }


def _tokenizer_name(settings: RunSettings, manifest: dict[str, Any]) -> str | None:
    """Which tokenizer cut the token chunker's chunks: blingfire or tokenizers (same chunks either way).
    Modal containers choose for themselves (the fast path where it applies)."""
    if manifest["chunking"]["chunker"] != "tokens":
        return None
    which = "auto" if settings.backend == "modal" else settings.compute.tokenizer
    try:
        return fast_tokenizer.name(load_tokenizer(manifest["model"]["model_id"]), which)
    except WikiembedError:  # a model only the containers can reach
        return None


def _use_tokenizer(settings: RunSettings) -> None:
    """Make the run's tokenizer choice this process's: the processes it starts (tokenizing and shard
    workers) inherit it."""
    os.environ[fast_tokenizer.CHOICE_ENV] = settings.compute.tokenizer


def _report(store: Store | VolumeStore, summary: dict[str, Any], states: list[ShardState], changes: dict[str, Any] | None = None) -> None:
    """The UI's view of the run: a shard-state table and a markdown summary, keyed per store."""
    create_table_artifact(
        [{"shard": s.shard, "state": s.state, "rows": s.rows, "chunks": s.chunks, "error": (s.error or "")[:200]} for s in states],
        key=artifact_key("shards", store),
        description=f"shard states of {store.root}",
    )
    chunking = ", ".join([str(summary["chunking"].get("chunker"))] + [f"{k} {v}" for k, v in summary["chunking"].items() if k != "chunker"])
    lines = [
        f"# wikiembed run: {summary['shards_done']}/{summary['shards_total']} shards done",
        "",
    ]
    if "rerun_shards" in summary:
        lines += [f"This rerun redid {len(summary['rerun_done'])} of the {len(summary['rerun_shards'])} shards it was asked "
                  f"to redo ({','.join(map(str, summary['rerun_shards'])) or 'none'}); the rest of the store is below.", ""]
    lines += [
        f"- store: `{summary['store']}` (generation `{summary['generation']}`)",
        f"- source: `{summary['source']}`",
        f"- model: `{summary['model']}` (revision `{summary['revision']}`)",
        f"- backend: {summary['backend']} on {summary['device']}",
        f"- chunking: {chunking}" + (f", tokens counted by {summary['tokenizer']}" if summary.get("tokenizer") else ""),
        f"- rows: {summary['rows']:,} ({summary['skipped_rows']:,} skipped)",
        f"- chunks: {summary['chunks']:,} ({summary['embedded_chunks']:,} embedded, {summary['reused_chunks']:,} reused)",
        f"- time: {summary['seconds']:.1f} s, {summary['chars_per_s']:,.0f} chars/s, {summary['retries']} retries",
    ]
    if summary.get("predicted_vs_actual"):
        pva = summary["predicted_vs_actual"]
        lines.append(
            f"- predicted vs actual: chunks {pva['chunks']['predicted']:,} (95%: {pva['chunks']['predicted_ci95'][0]:,}-"
            f"{pva['chunks']['predicted_ci95'][1]:,}) vs {pva['chunks']['actual']:,}; seconds "
            f"{pva['seconds']['predicted']} vs {pva['seconds']['actual']} ({pva['seconds']['basis']})"
        )
    if changes:
        lines.append(
            f"- source changes: {changes['added']} articles added, {changes['edited']} edited, {changes['removed']} removed"
        )
    if summary["failed_shards"]:
        ids = ",".join(str(k) for k in summary["failed_shards"])
        lines += ["", "## Failed shards", ""]
        lines += [f"- {s.shard:05d}: {(s.error or '')[:300]}" for s in states if s.state == "failed"]
        lines += [
            "",
            "Rerun them once the cause is fixed, from a terminal:",
            "",
            f"    {rerun_command(store.root, ids)}",
            "",
            "or through the rerun deployment (a worker on the pool runs it; `-p shards=failed` takes every failed one):",
            "",
            f"    {rerun_deployment_command(store.root, ids)}",
        ]
    if summary["pending_shards"]:
        ids = ",".join(str(k) for k in summary["pending_shards"])
        lines += ["", "## Pending shards", "", f"Never started: {ids}. Embed them with the store's settings:", "",
                  f"    {rerun_command(store.root, ids)}", "", "or run the same `wikiembed run` command again."]
    create_markdown_artifact("\n".join(lines), key=artifact_key("summary", store), description=f"run summary of {store.root}")


def artifact_key(kind: str, store: Store) -> str:
    """`wikiembed-<kind>-<store slug>-<hash>`: each store's latest progress, table and summary
    under their own keys. Prefect keys allow lowercase letters, digits and dashes, so the slug
    (the path's end, readable in the UI) drops case and punctuation; the hash of the exact path
    keeps stores such as runs/a-b, runs/a_b and runs/A.B apart."""
    path = str(store.root)
    slug = re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")[-50:].lstrip("-")
    return f"wikiembed-{kind}-{slug}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"


def rerun_command(store: Any, shards: str) -> str:
    which = "--failed" if shards == "failed" else f"--shards {shards}"
    return f"wikiembed rerun --store {shlex.quote(str(store))} {which}"


def rerun_deployment_command(store: Any, shards: str) -> str:
    return f"prefect deployment run {RERUN_DEPLOYMENT} -p {shlex.quote(f'store={store}')} -p shards={shards}"


def source_label(source: str, config: str | None) -> str:
    """The source as a user names it: the spec, with the Hub config after a colon."""
    return f"{source}:{config}" if config else source


def run_tags(settings: RunSettings, manifest: dict[str, Any]) -> list[str]:
    """Tags that say what ran, on the flow run (filterable in the UI).

    Not on the shard task runs: Prefect takes a tag-based concurrency slot for every tag of a
    task run as it starts (one more API call per task, lease included), which cut a Modal run's
    dispatch rate here by more than half (58 against 20 shards/s, `bench/fanout.py`)."""
    return [f"model:{manifest['model']['model_id']}", f"source:{source_label(settings.source, settings.config)}", f"backend:{settings.backend}"]


def _tag_flow_run(settings: RunSettings, manifest: dict[str, Any]) -> None:
    # A flow run's tags are fixed when it is created (by a deployment or a caller) before the
    # model is resolved; add ours to the ones it has.
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    current = list(context.flow_run.tags)
    with get_client(sync_client=True) as client:
        client.update_flow_run(context.flow_run.id, tags=current + [t for t in run_tags(settings, manifest) if t not in current])


def _what_runs(settings: RunSettings, manifest: dict[str, Any]) -> str:
    return f"source {source_label(settings.source, settings.config)}, model {manifest['model']['model_id']}, backend {settings.backend}"


def _embed_run_name() -> str:
    # From the raw parameters: a name must not fail before the run can report a bad one.
    params = {name: field.default for name, field in RunSettings.model_fields.items()} | flow_run.parameters
    model = str(params["model"]).rstrip("/").rsplit("/", 1)[-1]
    return f"embed {source_label(params['source'], params['config'])} with {model} on {params['backend']} into {params['store']}"


def _rerun_run_name() -> str:
    params = flow_run.parameters
    selection = params.get("shards", "failed")
    what = "the failed shards" if str(selection).strip() == "failed" else f"shards {selection}"
    return f"re-embed {what} of {params['store']}"


def _device(settings: RunSettings, model: str, embedded: bool) -> str:
    """Where the run's vectors were computed. The local engine says which device it chose; it is
    asked only when shards were embedded here (so it is already open), never opened to report."""
    c = settings.compute
    if settings.backend == "tei":
        return ", ".join(c.tei_url)
    if settings.backend == "modal":
        return f"Modal {c.modal_class} on {c.gpu or 'its deployed GPU'}"
    if not embedded:
        return "nothing embedded" if c.device == "auto" else c.device
    return str(getattr(open_backend(model=model, **_backend_opts(settings)), "device", None) or "the local device")


def _announce_estimate(store: Store, manifest: dict[str, Any], pending: list[int], settings: RunSettings) -> dict[str, Any] | None:
    """What the pending shards should take, from the snapshot: one line on stderr and a markdown artifact."""
    shards = manifest["plan"]["shards"]
    try:
        predicted = store_estimate(
            store.snapshot_path, [tuple(shards[k]) for k in pending], manifest, backend=settings.backend,
            hardware=run_hardware(settings.backend, settings.compute.device, settings.compute.gpu),
        )
    except WikiembedError as exc:  # an estimate must never stop a run
        get_run_logger().warning("no estimate for this run: %s", exc)
        return None
    # Written, not printed: the flow's log_prints turns print() into a log record, which the CLI's
    # console handler does not show. The UI has the artifact below.
    sys.stderr.write(one_line(predicted) + "\n")
    sys.stderr.flush()
    create_markdown_artifact(estimate_markdown(predicted), key=artifact_key("estimate", store),
                              description=f"what this run of {store.root} should take")
    return predicted


def check_backend(settings: RunSettings, model: str) -> int:
    """Open the backend once before any shard starts: a wrong URL, an unreachable server or a
    missing model fails the run in seconds with one clear message, not once per shard.

    Returns the backend's request-retry count from before this open, the run's starting point."""
    before = backend_retries(model=model, **_backend_opts(settings))
    try:
        open_backend(model=model, **_backend_opts(settings))
    except TransientBackendError as exc:  # already retried inside the backend
        raise BackendError(f"the {settings.backend} backend could not be opened: {exc}") from exc
    except WikiembedError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model folder a loader chokes on (truncated weights, bad files)
        cause = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        raise InputError(
            f"model {model!r} could not be loaded by the {settings.backend} backend ({cause}); its files are damaged "
            "or incomplete (a copy or download cut short leaves truncated weights): copy or download it again, "
            "or point --model at a complete model folder. Nothing was written to the store."
        ) from exc
    return before


def check_model_revision(store: Store, manifest: dict[str, Any]) -> None:
    """A rerun redoes shards with the generation's own model: refuse (before any file changes) when the
    model's files are no longer the ones its other shards were embedded with."""
    recorded = manifest["model"]["revision"]
    info = model_info(manifest["model"]["model_id"])
    if info.revision != recorded:
        raise InputError(
            f"model {manifest['model']['model_id']!r}: its files at {info.path} changed since store {store.root} was "
            f"embedded (revision {recorded} then, {info.revision} now), and a rerun must use the weights its other "
            "shards were made with. Put those files back to rerun; or, to embed with the new files, run the "
            "`wikiembed run` that made the store again: it builds a new generation from the new revision and "
            "publishes it when done. Nothing was changed."
        )


def _finish(store: Store | VolumeStore, settings: RunSettings, run: dict[str, Any], started: float, changes=None, predicted=None,  # noqa: ANN001
            states: list[ShardState] | None = None, rerun: list[int] | None = None) -> dict[str, Any]:
    # One view of every shard for the export decision, the summary and the table (on a Volume
    # store each view is a remote call that reads every marker); `states` when the run changed none.
    states = states if states is not None else store.states()
    all_done = all(s.state == "done" for s in states)
    # Before the export, so the card it writes carries the check. It reads vectors: local stores
    # only (a Volume store's vectors stay in the cloud).
    local = isinstance(store, Store)
    checked = eval_task(str(store.root), store.gen, settings.output.eval_sample) if all_done and settings.output.eval_sample and local else None
    indexed = index_task(str(store.root), store.gen, settings.output.index) if all_done and settings.output.index and local else None
    if all_done:
        export_task(str(store.root), store.gen, settings.upload_to)
    device = _device(settings, store.read_manifest()["model"]["model_id"], bool(run["results"]))
    summary = _summary(store, settings, run, time.perf_counter() - started, device, states)
    if changes:
        summary["changes"] = changes
    if checked:
        summary["eval"] = checked
    if indexed:
        summary["index"] = indexed
    if predicted:
        done = sum(r.get("chunks", 0) for r in run["results"].values())
        summary["predicted_vs_actual"] = compare(predicted, done, summary["seconds"])
    if rerun is not None:
        summary["rerun_shards"] = rerun
        summary["rerun_done"] = sorted(run["results"])
    _report(store, summary, states, changes)
    return summary


def _outcome(summary: dict[str, Any]) -> dict[str, Any] | State:
    """Completed (the summary) only when every shard is done; otherwise a Failed state whose
    message says how many, why, and the rerun, so the UI, the dashboard and automations see it."""
    missing = summary["shards_total"] - summary["shards_done"]
    failed = summary["shards_failed"]  # a rerun's failed shard may still hold its earlier data
    if not missing and not failed:
        return summary
    what = f"{failed}/{summary['shards_total']} shards failed" if failed >= missing else (
        f"{missing}/{summary['shards_total']} shards not done ({failed} failed)"
    )
    store = open_store(summary["store"], summary["generation"])
    errors = sorted({(s.error or "").splitlines()[0][:200] for s in store.states() if s.state == "failed"} - {""})
    cause = f": {errors[0]}" + (f" (and {len(errors) - 1} other errors)" if len(errors) > 1 else "") if errors else ""
    message = (
        f"{what}{cause}; rerun with `{rerun_command(summary['store'], 'failed')}` "
        f"or `{rerun_deployment_command(summary['store'], 'failed')}`"
    )
    get_run_logger().error(message)
    return Failed(message=message, data=ShardsFailed(message, summary))


def _takes_run_settings(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Make `fn(**options)` take exactly RunSettings' fields: the same names, types, defaults and
    order, with each field's description as an `Args:` entry. Prefect builds the flow's UI form
    and validates every run's parameters from this signature and docstring."""
    fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=field.annotation,
                default=inspect.Parameter.empty if field.is_required() else field.get_default(call_default_factory=True),
            )
            for name, field in RunSettings.model_fields.items()
        ],
        return_annotation=dict[str, Any],
    )
    args = "".join(f"    {name}: {field.description}\n" for name, field in RunSettings.model_fields.items())
    fn.__doc__ = f"{RunSettings.__doc__}\n\nArgs:\n{args}"
    return fn


@flow(
    name="embed-dataset",
    flow_run_name=_embed_run_name,
    log_prints=True,
    task_runner=ThreadPoolTaskRunner(max_workers=2 * MAX_CONCURRENCY),
)
@_takes_run_settings
def embed_dataset(**options: Any) -> dict[str, Any] | State:
    settings = RunSettings(**options)
    _use_tokenizer(settings)
    check_store_for_backend(settings.backend, settings.store)
    started = time.perf_counter()
    retries_before = None
    if settings.backend == "local":
        # The model is loaded before the store is touched: a model folder that cannot embed must not
        # be recorded as the store's model, nor leave a lock file in a new folder. (TEI and Modal
        # servers hold their own copy of the model; they are asked once there are shards to send.)
        retries_before = check_backend(settings, settings.model)
    with open_store(settings.store).lock() as lease:
        planned = download_task(settings)
        s = open_store(planned["store"], planned["gen"])
        manifest = s.read_manifest()
        _tag_flow_run(settings, manifest)
        states = s.states(manifest)
        pending = [st.shard for st in states if st.state != "done"]
        if pending and retries_before is None and isinstance(s, Store):  # on a Volume the shards open their backend remotely
            retries_before = check_backend(settings, manifest["model"]["model_id"])
        _calibrate(s, settings)
        _check_index(s, settings)
        manifest = s.read_manifest()
        changes = planned["changes"]  # articles added / edited / removed since the published generation, if any
        # The estimate reads the snapshot, which a Volume store keeps in the cloud.
        predicted = _announce_estimate(s, manifest, pending, settings) if pending and isinstance(s, Store) else None
        total = len(manifest["plan"]["shards"])
        get_run_logger().info(
            "%s: %d shards, %d pending (%d done); %s", s.root, total, len(pending), total - len(pending), _what_runs(settings, manifest)
        )
        run = run_shards(s, pending, settings, reuse_gen=planned["previous_gen"], done_before=total - len(pending),
                         retries_before=retries_before, lease=lease)
        # With nothing pending, no shard changed state (the store is locked): the states above still hold.
        return _outcome(_finish(s, settings, run, started, changes, predicted, states=None if pending else states))


def _calibrate(store: Store | VolumeStore, settings: RunSettings) -> None:
    """Fix the generation's int8 ranges before any shard is embedded (see wikiembed/calibration.py)."""
    if isinstance(store, Store):
        calibrate_task(str(store.root), store.gen, _backend_opts(settings))
    elif needs_calibration(manifest := store.read_manifest()):
        # In a shard container at the Volume, with the backend that embeds the shards.
        calibrate_remote_task(str(store.root), store.gen, manifest["model"]["model_id"], _backend_opts(settings))


def _check_index(store: Store | VolumeStore, settings: RunSettings) -> None:
    """The index is built after the last shard, on the flow's machine: check that it can be, before the first."""
    if not settings.output.index:
        return
    if not isinstance(store, Store):
        raise InputError("--index needs a local --store for now: the index is built on the flow's machine from the data files.")
    require_library()


@flow(
    name="rerun-shards",
    flow_run_name=_rerun_run_name,
    log_prints=True,
    task_runner=ThreadPoolTaskRunner(max_workers=2 * MAX_CONCURRENCY),
)
def rerun_shards(store: str, shards: ShardSelection = "failed") -> dict[str, Any] | State:
    """Re-embed chosen shards, or every failed one, with the store's recorded settings.

    Args:
        store: Run store folder to repair (as given to the run that filled it).
        shards: Shard ids, typed as 3,17 or [3, 17], or failed for every failed shard (see the run's shard table).
    """
    started = time.perf_counter()
    selection = parse_shards(shards)
    s = open_store(store)
    manifest = s.read_manifest()
    total = len(manifest["plan"]["shards"])
    states = s.states(manifest)
    if selection == "failed":
        # Failed shards, and shards whose data no longer matches their marker (damaged since).
        ids = [st.shard for st in states if st.state in ("failed", "changed")]
    else:
        bad = [k for k in selection if not 0 <= k < total]
        if bad:
            raise InputError(f"--shards {bad}: this store has shards 0..{total - 1}; see `wikiembed status --store {shlex.quote(str(store))}`.")
        ids = selection
    settings = RunSettings(**manifest["settings"])
    _use_tokenizer(settings)
    _tag_flow_run(settings, manifest)
    get_run_logger().info(
        "%s: re-embedding %d of %d shards (%s); %s", s.root, len(ids), total, ",".join(map(str, ids)) or "none failed",
        _what_runs(settings, manifest),
    )
    with s.lock() as lease:
        reuse_gen = manifest.get("previous_generation")
        retries_before = None
        if isinstance(s, Store):
            # Everything a rerun needs is checked before it starts; a shard's old file and marker
            # stay until its new file replaces them (atomically), so a failed rerun loses nothing.
            s.ensure_writable()
            check_snapshot(s, manifest)
            check_model_revision(s, manifest)
            retries_before = check_backend(settings, manifest["model"]["model_id"])
            reuse_gen = reuse_gen if reuse_gen and Store(s.root, reuse_gen).exists() else None
            if reuse_gen:  # as the download step does: shard workers load it instead of each building it
                reuse_index.ReuseIndex(Store(s.root, reuse_gen)).save()
        _calibrate(s, settings)
        _check_index(s, settings)
        if not isinstance(s, Store):
            for k in ids:  # a remote shard skips what its marker says is done
                s.forget(k)
        done_before = sum(st.state == "done" and st.shard not in ids for st in states)
        run = run_shards(s, ids, settings, reuse_gen=reuse_gen, done_before=done_before, retries_before=retries_before, lease=lease)
        summary = _finish(s, settings, run, started, rerun=ids)
    if run["failures"]:  # a shard whose rerun failed keeps its previous data, but the rerun did not succeed
        summary["failed_shards"] = sorted(set(summary["failed_shards"]) | set(run["failures"]))
        summary["shards_failed"] = len(summary["failed_shards"])
    return _rerun_outcome(summary, run["failures"])


def _rerun_outcome(summary: dict[str, Any], failures: dict[int, str]) -> dict[str, Any] | State:
    """Completed when every shard the rerun was asked to redo is done: the store's other failed or
    pending shards are in its summary and shard table, not in the rerun's state."""
    if not failures:
        return summary
    ids = sorted(failures)
    errors = sorted({failures[k].splitlines()[0][:200] for k in ids} - {""})
    cause = f": {errors[0]}" + (f" (and {len(errors) - 1} other errors)" if len(errors) > 1 else "") if errors else ""
    which = ",".join(map(str, ids))
    message = (
        f"{len(ids)}/{len(summary['rerun_shards'])} shards of this rerun failed{cause}; once the cause is fixed, "
        f"rerun them with `{rerun_command(summary['store'], which)}` or `{rerun_deployment_command(summary['store'], which)}`"
    )
    get_run_logger().error(message)
    return Failed(message=message, data=ShardsFailed(message, summary))


if __name__ == "__main__":
    embed_dataset(store="runs/sample")
