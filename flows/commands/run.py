"""`wikiembed run` and `wikiembed rerun`: the embed-dataset and rerun-shards flows, and the summary they print.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from wikiembed.flows.commands.base import (EXIT_FAILED_SHARDS, EXIT_OK, Command, add_run_options, in_flow_thread,
                                           write_json)
from wikiembed.results import RunSummary


def print_summary(summary: RunSummary, out=None) -> None:  # noqa: ANN001
    out = out or sys.stdout  # looked up now: whoever replaced sys.stdout since the import gets the lines
    counted = f", tokens counted by {summary.tokenizer}" if summary.tokenizer else ""
    print(
        f"wikiembed: {summary.shards_done}/{summary.shards_total} shards done, "
        f"{summary.shards_failed} failed | rows {summary.rows:,} ({summary.skipped_rows:,} skipped) | "
        f"chunks {summary.chunks:,} ({summary.embedded_chunks:,} embedded, {summary.reused_chunks:,} reused{counted}) | "
        f"{summary.seconds:.1f}s, {summary.chars_per_s:,.0f} chars/s",
        file=out,
    )
    if summary.predicted_vs_actual:
        pva = summary.predicted_vs_actual
        print(f"predicted vs actual: chunks {pva.chunks.predicted:,} vs {pva.chunks.actual:,}; "
              f"seconds {pva.seconds.predicted_text()} vs {pva.seconds.actual} ({pva.seconds.basis})", file=out)
    if summary.eval:
        e = summary.eval
        print(f"eval ({e.n} titles as queries, float32): recall@1 {e.recall_at_1:.3f}, recall@10 {e.recall_at_10:.3f}, "
              f"MRR@10 {e.mrr:.3f}; every form in {summary.store}/README.md", file=out)
    if summary.index:
        print("index: " + "; ".join(f"{i.form} ({i.rows:,} vectors, {i.bytes / 1e6:,.1f} MB, {i.seconds:.1f}s; "
                                     f"{i.parts_built} data files indexed, {i.parts_reused} reused)"
                                     for i in summary.index) + "; search and eval use it", file=out)
    if summary.changes:
        c = summary.changes
        print(f"source changes: {c['added']} added, {c['edited']} edited, {c['removed']} removed articles", file=out)
    if summary.rerun_shards is not None:
        print(f"rerun: {len(summary.rerun_done or ())}/{len(summary.rerun_shards)} of the shards it was asked to redo are done",
              file=out)
    if summary.pending_shards:
        ids = ",".join(str(k) for k in summary.pending_shards)
        print(f"pending shards (never started): {ids}; embed them with the store's settings with", file=out)
        print(f"    wikiembed rerun --store {shlex.quote(str(summary.store))} --shards {ids}", file=out)
        print("or run the same `wikiembed run` command again", file=out)
    if summary.failed_shards:
        ids = ",".join(str(k) for k in summary.failed_shards)
        store = shlex.quote(str(summary.store))
        print(f"failed shards: {ids}; see `wikiembed status --store {store}`, then run", file=out)
        print(f"    wikiembed rerun --store {store} --failed", file=out)


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser)
    parser.add_argument("--summary-json", help="write the run summary as JSON here")


def _cmd_run(args: argparse.Namespace) -> int:
    from wikiembed.plan import resolve
    from wikiembed.settings import RunSettings
    from wikiembed.executors import executor_class
    from wikiembed.store_location import locate

    options = {k: v for k, v in vars(args).items() if k not in ("command", "summary_json")}
    settings = RunSettings(**options)
    if "source" not in options:
        print(f"wikiembed: no --source given: embedding the built-in sample ({settings.source}); "
              "pass --source to embed your own data.", file=sys.stderr)
    # Before Prefect starts (seconds): the options, the source's path, the model, the store.
    location = locate(settings.store)
    location.check_executor(executor_class(settings.backend))
    _, info, chunking = resolve(settings)
    location.check_run(settings, info, chunking)  # a Volume store is checked where it is, in the flow
    from wikiembed.flows.embed_dataset import embed_dataset  # Prefect: imported once the checks have passed

    summary = RunSummary.from_json(in_flow_thread(embed_dataset, **settings.model_dump()))
    write_json(args.summary_json, summary)
    print_summary(summary)
    return EXIT_OK if summary.complete else EXIT_FAILED_SHARDS


def _rerun_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--shards", help="comma-separated shard ids, e.g. 3,17")
    which.add_argument("--failed", action="store_true", help="every failed shard")
    parser.add_argument("--summary-json")


def _cmd_rerun(args: argparse.Namespace) -> int:
    from wikiembed.settings import parse_shards

    shards = "failed" if args.failed else parse_shards(args.shards)  # a typo is refused before Prefect is imported
    from wikiembed.flows.embed_dataset import rerun_shards

    summary = RunSummary.from_json(in_flow_thread(rerun_shards, store=args.store, shards=shards))
    write_json(args.summary_json, summary)
    print_summary(summary)
    return EXIT_OK if summary.complete else EXIT_FAILED_SHARDS


RUN = Command(
    "run",
    "embed a source into a store (resumes what is there)",
    _run_arguments,
    _cmd_run,
    quiet_downloads=True,
    stops_on_signals=True,
)


RERUN = Command(
    "rerun",
    "re-embed chosen or failed shards with the store's settings",
    _rerun_arguments,
    _cmd_rerun,
    quiet_downloads=True,
    stops_on_signals=True,
)
