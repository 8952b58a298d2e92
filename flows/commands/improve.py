"""`wikiembed finetune` and `wikiembed improve`: the store's model trained on judged queries, and the improve loop
(fine-tune, re-embed, compare, publish only if better).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wikiembed.flows.commands.base import (EXIT_FAILED_SHARDS, EXIT_OK, Command, add_model_options, check_writable, given,
                                           in_flow_thread, write_json)
from wikiembed.flows.commands.run import print_summary
from wikiembed.results import ImproveResult, RunSummary


def _finetune_arguments(parser: argparse.ArgumentParser) -> None:
    from wikiembed.finetune_settings import FinetuneSettings

    parser.add_argument("--store", required=True, help="the store: a local folder, or modal:VOLUME/PATH (the fine-tune then runs on a Modal GPU next to it)")
    parser.add_argument("--pairs", required=True, metavar="FILE", help="judged queries, as for eval --queries (modal:VOLUME/PATH for a Volume store)")
    parser.add_argument("--out", required=True, metavar="DIR", help="a new folder for the fine-tuned model (modal:VOLUME/PATH for a Volume store)")
    add_model_options(parser, FinetuneSettings)
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="also write the result as JSON here")


def _cmd_finetune(args: argparse.Namespace) -> int:
    from wikiembed.finetune_settings import FinetuneSettings
    from wikiembed.store_location import locate

    settings = FinetuneSettings(**given(args, FinetuneSettings))
    location = locate(args.store)
    location.check_paths(args.pairs, args.out, flags={"pairs": "--pairs", "out": "--out"})
    # Where the store is: here, or on a Modal GPU next to the store's Volume (the model folder is written there).
    result = location.finetune(args.pairs, args.out, settings)
    write_json(args.json_path, result)  # before printing: a reader that leaves early cannot cost the file
    p = result.pairs
    if p.unmatched:
        print(f"wikiembed finetune: warning: {p.unmatched} of {p.read} queries name no article or chunk of the store; "
              "they are left out", file=sys.stderr)
    print(f"fine-tuned {result.base_model} on {result.train} queries ({result.examples} examples, {result.loss}, "
          f"{result.settings['epochs']} epoch(s), {result.device}, {result.seconds:.0f}s) into {result.out}")
    merged = p.near_duplicates or 0
    alike = f" ({merged} near-duplicate queries merged first: the model reads them as another)" if merged else ""
    print(f"held out {result.holdout} queries{alike}, ranked against {result.pool:,} chunks:")
    for label, block, sign in (("base", result.before, ""), ("fine-tuned", result.after, ""), ("difference", result.difference, "+")):
        print(f"  {label:<11} " + ", ".join(
            f"{m} {block.value(m):{sign}.3f} [{block.interval(m)[0]:{sign}.3f}, {block.interval(m)[1]:{sign}.3f}]"
            for m in ("recall_at_1", "recall_at_10", "mrr")))
    return EXIT_OK


def _improve_arguments(parser: argparse.ArgumentParser) -> None:
    from wikiembed.finetune_settings import FinetuneSettings
    from wikiembed.improve import ImproveSettings

    add_model_options(parser, ImproveSettings, skip=("finetune",))
    add_model_options(parser, FinetuneSettings)
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="also write the result as JSON here")


def _cmd_improve(args: argparse.Namespace) -> int:
    from wikiembed.errors import ShardsFailed
    from wikiembed.finetune_settings import FinetuneSettings
    from wikiembed.flows.improve_model import METRIC_NAMES, improve_model
    from wikiembed.improve import ImproveSettings
    from wikiembed.store_location import locate

    settings = ImproveSettings(**given(args, ImproveSettings, skip=("finetune",)), finetune=given(args, FinetuneSettings))
    # Before Prefect starts (seconds): every path where the loop can reach it.
    locate(settings.store).check_paths(settings.pairs, settings.out, settings.new_store,
                flags={"pairs": "--pairs", "out": "--out", "new_store": "--new-store"})
    try:
        result = in_flow_thread(improve_model, summary_on_failure=False, **settings.model_dump())
    except ShardsFailed as exc:  # the re-embed stopped: what it finished is kept, the same command resumes
        print_summary(RunSummary.from_json(exc.summary), out=sys.stderr)
        print(f"wikiembed improve: {exc}", file=sys.stderr)
        return EXIT_FAILED_SHARDS
    result = ImproveResult.from_json(result)
    write_json(args.json_path, result)  # before printing: a reader that leaves early cannot cost the file
    tuned, reembed = result.finetune, result.reembed
    print(f"fine-tuned {tuned.base_model} on {tuned.train} queries ({tuned.settings['epochs']} epoch(s), "
          f"{tuned.device}, {tuned.seconds:.0f}s) into {tuned.out}")
    shards = f"{reembed.shards_done}/{reembed.shards_total} shards"
    if reembed.embedded_chunks == reembed.chunks:
        print(f"re-embedded {reembed.chunks:,} chunks into {result.new.store} ({shards})")
    else:  # a round run again: what its earlier runs embedded is kept, not embedded again
        print(f"re-embedded {reembed.embedded_chunks:,} of the {reembed.chunks:,} chunks of {result.new.store} "
              f"({shards}); the rest were embedded by an earlier run of this round")
    merged = tuned.pairs.near_duplicates or 0
    alike = f" ({merged} near-duplicate queries merged first: the model reads them as another)" if merged else ""
    print(f"held out {result.old.n} queries{alike}, scored over every chunk of each store:")
    for label, block, sign in (("old", result.old, ""), ("new", result.new, ""), ("new - old", result.difference, "+")):
        print(f"  {label:<10} " + ", ".join(
            f"{METRIC_NAMES[m]} {block.value(m):{sign}.3f} [{block.interval(m)[0]:{sign}.3f}, {block.interval(m)[1]:{sign}.3f}]"
            for m in METRIC_NAMES))
    if result.publish:
        where = (f"published to {result.published.published.target}" if result.published and result.published.published
                 else "no --upload-to given, nothing uploaded")
        print(f"publish ({where}): {result.reason}")
    else:
        print(f"keep: {result.reason}")
    return EXIT_OK


def _check_model_folder(args: argparse.Namespace) -> None:
    from wikiembed.store_location import locate

    if locate(args.store).files_here:
        check_writable(Path(args.out).expanduser(), "--out", args.out)


def _check_improve_outputs(args: argparse.Namespace) -> None:
    from wikiembed.store_location import locate

    if locate(args.store).files_here:
        check_writable(Path(args.out).expanduser(), "--out", args.out)
        check_writable(Path(args.new_store).expanduser(), "--new-store", args.new_store)


def _finetune_reads_vectors(args: argparse.Namespace) -> bool:
    from wikiembed.store_location import locate

    return locate(args.store).files_here  # on a Volume, the fine-tune reads them in its container


FINETUNE = Command(
    "finetune",
    "fine-tune the store's model on judged queries (hard negatives from the store, a held-out share)",
    _finetune_arguments,
    _cmd_finetune,
    quiet_downloads=True,
    reads_vectors=_finetune_reads_vectors,
    check_outputs=_check_model_folder,
)


IMPROVE = Command(
    "improve",
    "fine-tune, re-embed into a new store, compare on held-out queries, publish only if better",
    _improve_arguments,
    _cmd_improve,
    quiet_downloads=True,
    stops_on_signals=True,
    check_outputs=_check_improve_outputs,
)
