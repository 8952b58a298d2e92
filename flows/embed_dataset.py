"""The Prefect flows: `embed-dataset` (download → shard → embed → checkpoint → export)
and `rerun-shards` (re-embed chosen or failed shards with the store's settings).

The tasks are in `tasks/`, one module per step; this module wires them together,
keeps shards in flight, and reports to the UI (what it reports, the runs' names and
tags: `run_reports`; how a flow ends on a user's mistake: `flow_errors`). Shards already done (marker
matches file) are never submitted, so a resumed run, or a flow run retried from
the UI, costs one listing of `_done/`.

What the UI shows is the truth about the run: a flow run is Completed only when
every shard is done, and otherwise Failed with a message that gives the count,
the cause and the rerun; its name and tags say what ran (source, model,
backend); its log has the plan and one line per shard; its artifacts are keyed
per store. The flow's parameters are RunSettings' fields (wikiembed/settings.py).

Where each step runs is the run's executor (`wikiembed.executors`, chosen by `backend`): this
module has one path for all of them.

Touches: the run store, Prefect's API (task runs, artifacts), the backend (through the executor).
"""

from __future__ import annotations

import inspect
import os
import shlex
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from wikiembed import fast_tokenizer
from wikiembed.errors import InputError, ShardsFailed, StoreError, WikiembedError
from wikiembed.estimate import Estimate, compare
from wikiembed.executors import executor_for
from wikiembed.executors.base import MAX_CONCURRENCY, Executor, ShardJob, StoreView
from wikiembed.flows.flow_errors import ends_failed_on_user_errors
from wikiembed.flows.run_reports import (announce_estimate, artifact_key, embed_run_name, report_run, rerun_command,
                                         rerun_deployment_command, rerun_run_name, source_label, tag_flow_run, what_runs)
from wikiembed.index_segments import require_library
from wikiembed.model import load_tokenizer
from wikiembed.progress import Progress
from wikiembed.settings import RunSettings, ShardSelection, parse_shards
from wikiembed.store_parts import ShardState
from wikiembed.tasks.calibrate import calibrate_task
from wikiembed.tasks.download import download_task
from wikiembed.tasks.embed import embed_task
from wikiembed.tasks.evaluate import eval_task
from wikiembed.tasks.export import export_task
from wikiembed.tasks.index import index_task
from wikiembed.tasks.retry import attempts_of
from wikiembed.store_location import locate
from wikiembed.records import Manifest, ShardResult, VectorKind, misfit
from wikiembed.results import PredictedVsActual, RunSummary

# Each shard in flight holds a pool thread (its embed task); see the executors' concurrency.
# The UI's progress artifact is updated at most this often: each update is an API call
# (about a quarter of a second here), which would otherwise cap a run at a few shards a second.
PROGRESS_ARTIFACT_EVERY_S = 2.0


def _record_vector_kind(executor: Executor, store: StoreView, logger, kind: VectorKind | None = None) -> None:  # noqa: ANN001
    """Pin the generation's kind of vectors in its manifest where the executor can (a killed run's
    markers pin it before anything else is embedded, else the run's first finished shard); a store
    that cannot be written (a full disk) only delays that: every marker records its kind, and the
    next run pins it."""
    try:
        executor.pin_kind(store, kind)
    except StoreError as exc:
        logger.error("could not record the kind of vectors in the manifest: %s", exc)


def _failure(state) -> tuple[str, int]:  # noqa: ANN001
    """(error text, attempts the task made) of a task that did not complete."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}", attempts_of(exc)
    return f"task ended in state {state.type.value}", 1


@dataclass
class ShardsRun:
    """What one pass of `run_shards` did: the shards it finished (their markers), the ones that failed (error,
    and the task runs each took), and the requests its backend retried."""

    results: dict[int, ShardResult] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    failed_attempts: dict[int, int] = field(default_factory=dict)
    request_retries: int = 0


def run_shards(
    executor: Executor,
    store: StoreView,
    shard_ids: list[int],
    *,
    reuse_gen: str | None,
    done_before: int,
    retries_before: int | None = None,
    lease: Any = None,
) -> ShardsRun:
    """Submit one embed task per shard id to the executor; record failures; return per-run counts.

    `done_before`: the store's done shards outside `shard_ids`, where the progress starts (a
    rerun of failed shards in a store with pending ones must not start at 100%).
    `retries_before`: the backend's request-retry count when this run began (before the
    up-front backend check, whose retries belong to this run too). `lease`: the store's lock;
    a lease that another run took over (`VolumeLease.lost`) stops this run from sending more
    shards: the shards in flight finish, then the run fails with `StoreError`, leaving the store
    (and its export) to the run that holds it."""
    logger = get_run_logger()
    manifest = store.read_manifest()
    total = len(manifest.plan.shards)
    progress = Progress.start(total=total, done=done_before)
    artifact_id = create_progress_artifact(
        progress.fraction * 100, key=artifact_key("progress", store), description=f"shards of {store.root}"
    )
    artifact_updated = time.monotonic()
    results: dict[int, ShardResult] = {}
    failures: dict[int, str] = {}
    failed_attempts: dict[int, int] = {}
    model = manifest.model.model_id
    if retries_before is None:
        retries_before = executor.request_retries(model)
    _record_vector_kind(executor, store, logger)
    pinned = manifest.vectors  # every shard this run finishes must hold this kind (the first one's, if none yet)
    window = executor.concurrency()
    todo = list(shard_ids)
    inflight: dict[Any, int] = {}
    finished = 0
    while todo or inflight:
        if todo and getattr(lease, "lost", None) is not None:
            stopped = len(todo)
            todo.clear()
            logger.error("the lease on %s was taken over by another run: %d shard(s) not sent", store.root, stopped)
        while todo and len(inflight) < window:
            k = todo.pop(0)
            job = ShardJob(str(store.root), str(store.gen), k, model, reuse_gen)
            inflight[embed_task.submit(executor, job)] = k
        future = next(as_completed(list(inflight)))
        k = inflight.pop(future)
        future.wait()  # as_completed can yield before the final state is recorded
        state = future.state
        finished += 1
        problem = None
        if state.is_completed():
            marker = future.result()
            problem = misfit(marker, pinned)
            if pinned is None and marker.vectors is not None:
                pinned = marker.vectors
                _record_vector_kind(executor, store, logger, pinned)
        if state.is_completed() and not problem:
            results[k] = marker
            seconds = marker.seconds
            logger.info(
                "shard %05d done: %s chunks in %.1f s (%s chunks/s), %d/%d",
                k, f"{marker.chunks:,}", seconds, f"{marker.chunks / seconds:,.0f}" if seconds else "-",
                finished, len(shard_ids),
            )
        else:
            if problem:  # the shard's file is of another kind than the generation's: it is not done
                store.forget(k)
                failures[k], failed_attempts[k] = f"InputError: shard {k:05d}: {problem}", 1
            else:
                failures[k], failed_attempts[k] = _failure(state)
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
    executor.end_run(str(store.root), reuse_gen)
    if getattr(lease, "lost", None) is not None:
        held = lease.lost
        raise StoreError(
            f"store {store.root}: this run lost its lease (it missed its renewals for {lease.lease_s:.0f} s) and the run "
            f"on host {held.get('host')}, pid {held.get('pid')} took the store over; this run stopped sending shards "
            f"after {len(results) + len(failures)} of {len(shard_ids)} and leaves the store and its export to that run. "
            f"Its finished shards are kept; `wikiembed status --store {shlex.quote(str(store.root))}` shows them once that run ends."
        )
    if results:
        _record_vector_kind(executor, store, logger)
    # Request-level retries of this run only: the flow's backend is shared by the runs of one
    # process; a shard worker's client reports its shard's retries with the marker.
    request_retries = executor.request_retries(model) - retries_before
    request_retries += sum(r.request_retries for r in results.values())
    return ShardsRun(results, failures, failed_attempts, request_retries)


def _summary(
    executor: Executor, store: StoreView, run: ShardsRun, seconds: float, device: str, states: list[ShardState], **extra: Any
) -> RunSummary:
    settings = executor.settings
    manifest = store.read_manifest()
    done = [s for s in states if s.state == "done"]
    results = run.results.values()
    embedded_chars = sum(r.embedded_chars for r in results)
    return RunSummary(
        store=str(store.root),
        generation=store.gen,
        source=source_label(settings.source, settings.config),
        model=manifest.model.model_id,
        revision=manifest.model.revision,
        backend=settings.backend,
        device=device,
        chunking=manifest.chunking.as_dict(),
        tokenizer=_tokenizer_name(executor, manifest),
        shards_total=len(states),
        shards_done=len(done),
        shards_failed=sum(s.state == "failed" for s in states),
        failed_shards=tuple(sorted(s.shard for s in states if s.state == "failed")),
        pending_shards=tuple(sorted(s.shard for s in states if s.state == "pending")),
        rows=manifest.plan.rows,
        skipped_rows=sum(manifest.skipped.values()),
        chunks=sum(s.chunks or 0 for s in done),
        embedded_chunks=sum(r.embedded_chunks for r in results),
        reused_chunks=sum(r.reused_chunks for r in results),
        # Rows the generation keeps from earlier ones (an incremental run: the articles that did not change).
        kept_chunks=sum(b.live_chunks for b in manifest.base),
        # Measured: retried requests inside the backend, plus retried task runs of done and failed shards.
        retries=run.request_retries
        + sum(max(r.attempts - 1, 0) for r in results)
        + sum(a - 1 for a in run.failed_attempts.values()),
        seconds=round(seconds, 3),
        chars_per_s=round(embedded_chars / seconds, 1) if seconds > 0 else 0.0,
        **extra,
    )


def _tokenizer_name(executor: Executor, manifest: Manifest) -> str | None:
    """Which tokenizer cut the token chunker's chunks: blingfire or tokenizers (same chunks either way)."""
    if manifest.chunking.chunker != "tokens":
        return None
    try:
        return fast_tokenizer.name(load_tokenizer(manifest.model.model_id), executor.tokenizer_choice())
    except WikiembedError:  # a model only the executor's machines can reach
        return None


def _use_tokenizer(settings: RunSettings) -> None:
    """Make the run's tokenizer choice this process's: the processes it starts (tokenizing and shard
    workers) inherit it."""
    os.environ[fast_tokenizer.CHOICE_ENV] = settings.compute.tokenizer


def _finish(executor: Executor, store: StoreView, run: ShardsRun, started: float, changes=None,  # noqa: ANN001
            predicted: Estimate | None = None, states: list[ShardState] | None = None, rerun: list[int] | None = None) -> RunSummary:
    settings = executor.settings
    # One view of every shard for the export decision, the summary and the table (on a Volume
    # store each view is a remote call that reads every marker); `states` when the run changed none.
    states = states if states is not None else store.states()
    all_done = all(s.state == "done" for s in states)
    # Before the export, so the card it writes carries the check. It reads vectors, so only where
    # they are on this machine (a Volume store's stay in the cloud).
    here = executor.data_here and all_done
    checked = (eval_task(str(store.root), store.gen, settings.output.eval_sample, settings.trust_remote_code)
               if here and settings.output.eval_sample else None)
    indexed = index_task(str(store.root), store.gen, settings.output.index) if here and settings.output.index else None
    if all_done:
        export_task(executor, str(store.root), str(store.gen), settings.upload_to)
    device = executor.device(store.read_manifest().model.model_id, bool(run.results))
    seconds = time.perf_counter() - started
    pva: PredictedVsActual | None = None
    if predicted:
        pva = compare(predicted, sum(r.chunks for r in run.results.values()), round(seconds, 3))
    summary = _summary(
        executor, store, run, seconds, device, states,
        changes=changes or None, eval=checked or None, index=tuple(indexed) if indexed else None, predicted_vs_actual=pva,
        rerun_shards=None if rerun is None else tuple(rerun), rerun_done=None if rerun is None else tuple(sorted(run.results)),
    )
    report_run(store, summary, states, changes)
    return summary


def _outcome(executor: Executor, summary: RunSummary) -> dict[str, Any] | State:
    """Completed (the summary's JSON) only when every shard is done; otherwise a Failed state whose
    message says how many, why, and the rerun, so the UI, the dashboard and automations see it."""
    missing = summary.shards_total - summary.shards_done
    failed = summary.shards_failed  # a rerun's failed shard may still hold its earlier data
    if not missing and not failed:
        return summary.to_json()
    what = f"{failed}/{summary.shards_total} shards failed" if failed >= missing else (
        f"{missing}/{summary.shards_total} shards not done ({failed} failed)"
    )
    store = executor.store(summary.store, summary.generation)
    errors = sorted({(s.error or "").splitlines()[0][:200] for s in store.states() if s.state == "failed"} - {""})
    cause = f": {errors[0]}" + (f" (and {len(errors) - 1} other errors)" if len(errors) > 1 else "") if errors else ""
    message = (
        f"{what}{cause}; rerun with `{rerun_command(summary.store, 'failed')}` "
        f"or `{rerun_deployment_command(summary.store, 'failed')}`"
    )
    get_run_logger().error(message)
    return Failed(message=message, data=ShardsFailed(message, summary.to_json()))


def _takes_run_settings(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Make `fn(**options)` take exactly RunSettings' fields: the same names, types, defaults and
    order, with each field's description as an `Args:` entry. Prefect builds the flow's UI form
    and validates every run's parameters from this signature and docstring."""
    fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation,
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
    flow_run_name=embed_run_name,
    log_prints=True,
    task_runner=ThreadPoolTaskRunner(max_workers=2 * MAX_CONCURRENCY),
)
@ends_failed_on_user_errors
@_takes_run_settings
def embed_dataset(**options: Any) -> dict[str, Any] | State:
    settings = RunSettings(**options)
    executor = executor_for(settings)
    _use_tokenizer(settings)
    started = time.perf_counter()
    # Where it publishes, before any work: not after every shard (a Volume store's token is checked where it publishes from).
    locate(settings.store).check_target(settings.upload_to)
    executor.check()  # before the store is touched: a store it cannot reach, a model it cannot load
    with executor.store(settings.store).lock() as lease:
        planned = download_task(executor)
        s = executor.store(planned.store, planned.gen)
        manifest = s.read_manifest()
        tag_flow_run(settings, manifest)
        states = s.states(manifest)
        pending = [st.shard for st in states if st.state != "done"]
        model = manifest.model.model_id
        retries_before = executor.request_retries(model)
        if pending:
            executor.check_backend(model)
        calibrate_task(executor, str(s.root), str(s.gen))
        _check_index(executor)
        manifest = s.read_manifest()
        # The estimate reads the snapshot, so only where it is on this machine.
        predicted = announce_estimate(s, manifest, states, executor) if pending and executor.data_here else None
        total = len(manifest.plan.shards)
        get_run_logger().info(
            "%s: %d shards, %d pending (%d done); %s", s.root, total, len(pending), total - len(pending), what_runs(settings, manifest)
        )
        run = run_shards(executor, s, pending, reuse_gen=planned.previous_gen, done_before=total - len(pending),
                         retries_before=retries_before, lease=lease)
        # With nothing pending, no shard changed state (the store is locked): the states above still hold.
        # `changes`: articles added / edited / removed since the published generation, if any.
        finished = _finish(executor, s, run, started, planned.changes, predicted, states=None if pending else states)
        return _outcome(executor, finished)


def _check_index(executor: Executor) -> None:
    """The index is built after the last shard, on the flow's machine: check that it can be, before the first."""
    if not executor.settings.output.index:
        return
    if not executor.data_here:
        raise InputError("--index needs a local --store for now: the index is built on the flow's machine from the data files.")
    require_library()


@flow(
    name="rerun-shards",
    flow_run_name=rerun_run_name,
    log_prints=True,
    task_runner=ThreadPoolTaskRunner(max_workers=2 * MAX_CONCURRENCY),
)
@ends_failed_on_user_errors
def rerun_shards(store: str, shards: ShardSelection = "failed") -> dict[str, Any] | State:
    """Re-embed chosen shards, or every failed one, with the store's recorded settings.

    Args:
        store: Run store folder to repair (as given to the run that filled it).
        shards: Shard ids, typed as 3,17 or [3, 17], or failed for every failed shard (see the run's shard table).
    """
    started = time.perf_counter()
    selection = parse_shards(shards)
    location = locate(store)
    s = location.open()
    manifest = s.read_manifest()
    total = len(manifest.plan.shards)
    states = s.states(manifest)
    if selection == "failed":
        # Failed shards, and shards whose data no longer matches their marker (damaged since).
        ids = [st.shard for st in states if st.state in ("failed", "changed")]
    else:
        bad = [k for k in selection if not 0 <= k < total]
        if bad:
            raise InputError(f"--shards {bad}: this store has shards 0..{total - 1}; see `wikiembed status --store {shlex.quote(str(store))}`.")
        ids = selection
    settings = RunSettings(**manifest.settings)
    if all(st.state == "done" or st.shard in ids for st in states):
        location.check_target(settings.upload_to, str(s.root))  # a rerun that completes the store publishes it: checked before any work
    executor = executor_for(settings)
    _use_tokenizer(settings)
    tag_flow_run(settings, manifest)
    get_run_logger().info(
        "%s: re-embedding %d of %d shards (%s); %s", s.root, len(ids), total, ",".join(map(str, ids)) or "none failed",
        what_runs(settings, manifest),
    )
    with s.lock() as lease:
        model = manifest.model.model_id
        retries_before = executor.request_retries(model)
        reuse_gen = executor.prepare_rerun(s, manifest, ids)  # everything it needs, checked before it starts
        calibrate_task(executor, str(s.root), str(s.gen))
        _check_index(executor)
        done_before = sum(st.state == "done" and st.shard not in ids for st in states)
        run = run_shards(executor, s, ids, reuse_gen=reuse_gen, done_before=done_before, retries_before=retries_before, lease=lease)
        summary = _finish(executor, s, run, started, rerun=ids)
    if run.failures:  # a shard whose rerun failed keeps its previous data, but the rerun did not succeed
        failed_shards = tuple(sorted(set(summary.failed_shards) | set(run.failures)))
        summary = summary.replace(failed_shards=failed_shards, shards_failed=len(failed_shards))
    return _rerun_outcome(summary, run.failures)


def _rerun_outcome(summary: RunSummary, failures: dict[int, str]) -> dict[str, Any] | State:
    """Completed (the summary's JSON) when every shard the rerun was asked to redo is done: the store's other failed
    or pending shards are in its summary and shard table, not in the rerun's state."""
    if not failures:
        return summary.to_json()
    ids = sorted(failures)
    errors = sorted({failures[k].splitlines()[0][:200] for k in ids} - {""})
    cause = f": {errors[0]}" + (f" (and {len(errors) - 1} other errors)" if len(errors) > 1 else "") if errors else ""
    which = ",".join(map(str, ids))
    message = (
        f"{len(ids)}/{len(summary.rerun_shards or ())} shards of this rerun failed{cause}; once the cause is fixed, "
        f"rerun them with `{rerun_command(summary.store, which)}` or `{rerun_deployment_command(summary.store, which)}`"
    )
    get_run_logger().error(message)
    return Failed(message=message, data=ShardsFailed(message, summary.to_json()))


if __name__ == "__main__":
    embed_dataset(store="runs/sample")
