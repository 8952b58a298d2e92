"""`wikiembed estimate`: what a run would cost, from a sample of the source and the recorded (or a store's) rates.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from wikiembed.flows.commands.base import EXIT_OK, Command, add_run_options, split_list, write_json


# The run options that decide what an estimate counts: what is read, and how it is cut into chunks.
ESTIMATE_OPTIONS = ("source", "config", "model", "prompt_name", "limit", "split", "columns", "chunker", "chunk_size", "chunk_overlap")


def _estimate_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser, only=ESTIMATE_OPTIONS)
    parser.add_argument("--backend", help="backends to price, comma-separated: local,tei,modal (default: every recorded rate)")
    parser.add_argument("--gpu", help="hardware, comma-separated: " + ",".join(("CPU", "T4", "A10G", "L4", "L40S", "A100", "A100-40GB", "A100-80GB", "H100", "H200", "B200")))
    parser.add_argument("--containers", type=int, default=1, help="containers working at once, for the wall time (default 1)")
    parser.add_argument("--sample", type=int, default=300, help="articles tokenized to estimate chunks and tokens (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", help="a run store whose done shards measured a rate on this machine: the backend and hardware "
                                        "its run used take that rate (default: the recorded rates only)")
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="also write the estimate as JSON here")


def _fmt_range(value: float, ci: Sequence[float]) -> str:
    return f"{value:,.0f}" if ci[0] == ci[1] else f"{value:,.0f} [{ci[0]:,.0f}, {ci[1]:,.0f}]"


def _cmd_estimate(args: argparse.Namespace) -> int:
    from wikiembed.estimate import estimate
    from wikiembed.settings import RunSettings

    # Validated and defaulted as a run would be; a --store is opened only for its done shards' rate.
    run = RunSettings(store="", **{name: getattr(args, name) for name in ESTIMATE_OPTIONS if hasattr(args, name)})
    result = estimate(
        run.source, config=run.config, split=run.reading.split, limit=run.limit, columns=run.reading.columns, model=run.model,
        chunker=run.chunking.chunker, chunk_size=run.chunking.chunk_size, chunk_overlap=run.chunking.chunk_overlap,
        prompt_name=run.prompt_name, backends=split_list(args.backend), gpus=split_list(args.gpu), containers=args.containers,
        sample=args.sample, seed=args.seed, store=args.store,
    )
    write_json(args.json_path, result)  # before printing: a reader that leaves early cannot cost the file
    print(f"{result.source} with {result.model} ({result.chunking}):")
    print(f"  articles {result.articles:,} | chars {_fmt_range(result.chars, result.chars_ci95)} | "
          f"chunks {_fmt_range(result.chunks, result.chunks_ci95)} | tokens {_fmt_range(result.tokens, result.tokens_ci95)}"
          " (95% intervals)")
    print(f"  sample: {result.sample.how}")
    for o in result.options:
        head = f"  {o.backend:<6} {o.gpu:<5} x{o.containers:<4}"
        if o.gpu_hours is None or o.wall_minutes is None or o.rate_chars_per_s is None:
            print(f"{head} {o.note}")
            continue
        usd = f"${o.usd:,.2f}" if o.usd is not None else "$ n/a"
        print(f"{head} {o.gpu_hours:,.3f} {o.unit.replace('-hours', '-h')}, {o.wall_minutes:,.1f} min wall, {usd}  "
              f"[{o.basis}: {o.rate_chars_per_s:,.0f} chars/s, {o.rate_date}]")
        print(f"{' ' * 19}{o.note}")
    return EXIT_OK


ESTIMATE = Command(
    "estimate",
    "what a run would cost: chunks, tokens, GPU- or CPU-hours, wall time, dollars",
    _estimate_arguments,
    _cmd_estimate,
)
