"""What a run tells its user: the Prefect UI's artifacts (the shard table, the run's summary, the
estimate), the flow runs' names and tags, and the rerun commands its messages name.

The artifacts are keyed per store (`artifact_key`), so each store's latest progress, table, summary and
estimate sit under their own keys; a flow run's name says what it embeds (or re-embeds) and its tags
what ran (source, model, backend). The flows (`wikiembed.flows.embed_dataset`, `improve_model`) call
these; nothing here runs a shard.

Touches: Prefect's API (artifacts, the flow run's tags), stderr (the estimate's line).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from prefect import get_client, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext
from prefect.runtime import flow_run

from wikiembed.errors import WikiembedError
from wikiembed.estimate import Estimate, markdown as estimate_markdown, one_line, store_estimate
from wikiembed.executors.base import Executor, StoreView
from wikiembed.records import Manifest
from wikiembed.results import RunSummary
from wikiembed.settings import RunSettings
from wikiembed.store_parts import ShardState

# The deployment of `rerun-shards` in prefect.yaml, named in rerun instructions.
RERUN_DEPLOYMENT = "rerun-shards/wikiembed-rerun"


def report_run(store: StoreView, summary: RunSummary, states: list[ShardState], changes: dict[str, Any] | None = None) -> None:
    """The UI's view of the run: a shard-state table and a markdown summary, keyed per store."""
    create_table_artifact(
        [{"shard": s.shard, "state": s.state, "rows": s.rows, "chunks": s.chunks, "error": (s.error or "")[:200]} for s in states],
        key=artifact_key("shards", store),
        description=f"shard states of {store.root}",
    )
    chunking = ", ".join([str(summary.chunking.get("chunker"))] + [f"{k} {v}" for k, v in summary.chunking.items() if k != "chunker"])
    lines = [
        f"# wikiembed run: {summary.shards_done}/{summary.shards_total} shards done",
        "",
    ]
    if summary.rerun_shards is not None:
        lines += [f"This rerun redid {len(summary.rerun_done or ())} of the {len(summary.rerun_shards)} shards it was asked "
                  f"to redo ({','.join(map(str, summary.rerun_shards)) or 'none'}); the rest of the store is below.", ""]
    lines += [
        f"- store: `{summary.store}` (generation `{summary.generation}`)",
        f"- source: `{summary.source}`",
        f"- model: `{summary.model}` (revision `{summary.revision}`)",
        f"- backend: {summary.backend}" + (f" on {summary.device}" if summary.device else " (this run embedded nothing)"),
        f"- chunking: {chunking}" + (f", tokens counted by {summary.tokenizer}" if summary.tokenizer else ""),
        f"- rows: {summary.rows:,} ({summary.skipped_rows:,} skipped)",
        f"- chunks: {summary.chunks:,} ({summary.embedded_chunks:,} embedded, {summary.reused_chunks:,} reused)",
        f"- time: {summary.seconds:.1f} s, {summary.chars_per_s:,.0f} chars/s, {summary.retries} retries",
    ]
    if summary.predicted_vs_actual:
        pva = summary.predicted_vs_actual
        lines.append(
            f"- predicted vs actual: chunks {pva.chunks.predicted:,} (95%: {pva.chunks.predicted_ci95[0]:,}-"
            f"{pva.chunks.predicted_ci95[1]:,}) vs {pva.chunks.actual:,}; seconds "
            f"{pva.seconds.predicted_text()} vs {pva.seconds.actual} ({pva.seconds.basis})"
        )
    if changes:
        lines.append(
            f"- source changes: {changes['added']} articles added, {changes['edited']} edited, {changes['removed']} removed"
        )
    if summary.failed_shards:
        ids = ",".join(str(k) for k in summary.failed_shards)
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
    if summary.pending_shards:
        ids = ",".join(str(k) for k in summary.pending_shards)
        lines += ["", "## Pending shards", "", f"Never started: {ids}. Embed them with the store's settings:", "",
                  f"    {rerun_command(store.root, ids)}", "", "or run the same `wikiembed run` command again."]
    create_markdown_artifact("\n".join(lines), key=artifact_key("summary", store), description=f"run summary of {store.root}")


def artifact_key(kind: str, store: StoreView) -> str:
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


def run_tags(settings: RunSettings, manifest: Manifest) -> list[str]:
    """Tags that say what ran, on the flow run (filterable in the UI).

    Not on the shard task runs: Prefect takes a tag-based concurrency slot for every tag of a
    task run as it starts (one more API call per task, lease included), which cut a Modal run's
    dispatch rate here by more than half (58 against 20 shards/s, `bench/fanout.py`)."""
    return [f"model:{manifest.model.model_id}", f"source:{source_label(settings.source, settings.config)}", f"backend:{settings.backend}"]


def tag_flow_run(settings: RunSettings, manifest: Manifest) -> None:
    add_flow_run_tags(run_tags(settings, manifest))


def add_flow_run_tags(tags: list[str]) -> None:
    """Add tags to the flow run this runs in (none outside one). A flow run's tags are fixed when it is
    created (by a deployment or a caller), before the model is resolved; ours join the ones it has."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    current = list(context.flow_run.tags)
    added = current + [t for t in tags if t not in current]
    with get_client(sync_client=True) as client:
        client.update_flow_run(context.flow_run.id, tags=added)
    context.flow_run.tags = added  # the next call adds to these, not to the tags the run started with


def what_runs(settings: RunSettings, manifest: Manifest) -> str:
    return f"source {source_label(settings.source, settings.config)}, model {manifest.model.model_id}, backend {settings.backend}"


def embed_run_name() -> str:
    # From the raw parameters: a name must not fail before the run can report a bad one.
    params = {name: field.default for name, field in RunSettings.model_fields.items()} | flow_run.parameters
    return (f"embed {source_label(params['source'], params['config'])} with {_model_label(str(params['model']))} on "
            f"{params['backend']} into {params['store']}")


def _model_label(model: str) -> str:
    """A model as a run's name shows it: a Hub id by its name (all-MiniLM-L6-v2); a local folder by its path, relative
    to the working folder where it is inside it, since its base name alone ("next", a fine-tune's) says nothing."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return model.rstrip("/").rsplit("/", 1)[-1]
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def rerun_run_name() -> str:
    params = flow_run.parameters
    selection = params.get("shards", "failed")
    what = "the failed shards" if str(selection).strip() == "failed" else f"shards {selection}"
    return f"re-embed {what} of {params['store']}"


def announce_estimate(store: Any, manifest: Manifest, states: list[ShardState], executor: Executor) -> Estimate | None:
    """What the pending shards should take, from the snapshot: one line on stderr and a markdown artifact.

    Its rate is the one measured where the run runs: by the store's done shards, else (the local engine on
    the CPU, open already) by a few seconds of the engine on the sample's chunks; the line says which."""
    settings = executor.settings
    shards = manifest.plan.shards
    model = manifest.model.model_id
    engine = executor.timing_engine(model)
    try:
        predicted = store_estimate(
            store.snapshot_path, [tuple(shards[st.shard]) for st in states if st.state != "done"], manifest,
            backend=settings.backend, hardware=executor.rate_hardware(settings.compute),
            done=[st.marker for st in states if st.state == "done" and st.marker is not None],
            engine=engine,
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
