"""The `wikiembed` command line: run, status, rerun, export, upload, estimate, search, index, eval, finetune, improve, serve.

Each command is a thin shell over a flow or a plain function. Errors a user
can fix print one message that names the input and the fix (exit 2); a run
with failed shards prints their ids and the rerun command (exit 1).

Touches: argv, stdout/stderr, and whatever the command's flow touches.
"""

from __future__ import annotations

import argparse
import atexit
import contextvars
import json
import os
import shlex
import signal
import sys
import threading
import types
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

from wikiembed.results import ImproveResult, JsonRecord, KeptFiles, RunSummary, ShardStatus, StatusPayload

# Defaults for a terminal: no Prefect telemetry (it also causes SQLite "database is
# locked" noise). The CLI prints its own progress bar, summary and errors, so
# Prefect's console handler shows only critical records; the Prefect API (the UI)
# still gets every log. PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL=INFO shows them here too.
_ENV_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "true",
}

EXIT_OK, EXIT_FAILED_SHARDS, EXIT_USAGE = 0, 1, 2
# How long a stop (Ctrl-C, SIGTERM) waits for the temporary Prefect server to exit.
STOP_SERVER_WAIT_S = 2.0


# The run options that decide what an estimate counts: what is read, and how it is cut into chunks.
ESTIMATE_OPTIONS = ("source", "config", "model", "prompt_name", "limit", "split", "columns", "chunker", "chunk_size", "chunk_overlap")


def _add_run_options(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """One flag per run option (or per option in `only`), generated from its definition in `wikiembed.settings`:
    the name (--chunk-size for chunk_size), choices, type, description and default all come from there."""
    from wikiembed.settings import option_fields

    for name, field in option_fields():
        if only is not None and name not in only:
            continue
        _add_field_option(parser, name, field)


def _add_model_options(parser: argparse.ArgumentParser, model: Any, skip: Sequence[str] = ()) -> None:
    """One flag per field of a pydantic settings model (`FinetuneSettings`, `ImproveSettings`), as for the run options."""
    for name, field in model.model_fields.items():
        if name not in skip:
            _add_field_option(parser, name, field)


def _add_field_option(parser: argparse.ArgumentParser, name: str, field: Any) -> None:
    """The flag of one settings field: its name (--chunk-size for chunk_size), choices, type, description and default."""
    kind = field.annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None: the flag takes an X
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "required": field.is_required()}
    if typing.get_origin(kind) is typing.Literal:
        kwargs["choices"] = list(typing.get_args(kind))
    elif kind in (int, float):
        kwargs["type"] = kind
    elif kind is bool:  # a switch: present means true
        kwargs["action"] = "store_true"
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    shown = f" (default: {default})" if default not in (None, [], False) else ""
    kwargs["help"] = f"{field.description}{shown}".replace("%", "%%")
    parser.add_argument(f"--{name.replace('_', '-')}", **kwargs)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wikiembed", description="Embed a text corpus into a Hugging Face dataset, resumably.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="embed a source into a store (resumes what is there)")
    _add_run_options(run)
    run.add_argument("--summary-json", help="write the run summary as JSON here")

    status = sub.add_parser("status", help="per-shard state of a store")
    status.add_argument("--store", required=True)
    status.add_argument("--json", action="store_true")
    status.add_argument("--verify", action="store_true", help="hash every done shard's data file (slow, thorough)")

    rerun = sub.add_parser("rerun", help="re-embed chosen or failed shards with the store's settings")
    rerun.add_argument("--store", required=True)
    which = rerun.add_mutually_exclusive_group(required=True)
    which.add_argument("--shards", help="comma-separated shard ids, e.g. 3,17")
    which.add_argument("--failed", action="store_true", help="every failed shard")
    rerun.add_argument("--summary-json")

    export = sub.add_parser("export", help="write the HF-ready folder (data + dataset card)")
    export.add_argument("--store", required=True)
    export.add_argument("--to", required=True, help="destination folder (modal:VOLUME/PATH for a store on a Modal Volume)")
    export.add_argument("--allow-partial", action="store_true", help="publish the done shards even if some are not")
    export.add_argument("--replace", action="store_true", help="export into a folder wikiembed did not write, replacing its files")

    upload = sub.add_parser("upload", help="publish to the Hugging Face Hub (hub:ORG/NAME) or a folder (dir:PATH; "
                            "modal:VOLUME/PATH from a store on a Modal Volume)")
    upload.add_argument("--store", required=True)
    upload.add_argument("--to", required=True)
    upload.add_argument("--private", action="store_true")
    upload.add_argument("--revision")
    upload.add_argument("--create-pr", action="store_true")
    upload.add_argument("--allow-partial", action="store_true", help="publish the done shards even if some are not")
    upload.add_argument("--replace", action="store_true", help="with dir:PATH, write into a folder wikiembed did not write")

    est = sub.add_parser("estimate", help="what a run would cost: chunks, tokens, GPU- or CPU-hours, wall time, dollars")
    _add_run_options(est, only=ESTIMATE_OPTIONS)
    est.add_argument("--backend", help="backends to price, comma-separated: local,tei,modal (default: every recorded rate)")
    est.add_argument("--gpu", help="hardware, comma-separated: " + ",".join(("CPU", "T4", "A10G", "L4", "L40S", "A100", "A100-40GB", "A100-80GB", "H100", "H200", "B200")))
    est.add_argument("--containers", type=int, default=1, help="containers working at once, for the wall time (default 1)")
    est.add_argument("--sample", type=int, default=300, help="articles tokenized to estimate chunks and tokens (default 300)")
    est.add_argument("--seed", type=int, default=0)
    est.add_argument("--store", help="a run store whose done shards measured a rate on this machine: the backend and hardware "
                                     "its run used take that rate (default: the recorded rates only)")
    est.add_argument("--json", dest="json_path", metavar="PATH", help="also write the estimate as JSON here")

    search = sub.add_parser("search", help="the chunks of a store nearest to a query (its index where built, else an exact scan)")
    search.add_argument("--store", required=True)
    search.add_argument("query", help="the text to search for")
    search.add_argument("-k", type=int, default=10, help="hits to return (default 10)")
    search.add_argument("--form", default="float32", help="stored form to search: float32 (default), float16, int8, binary, or e.g. int8@128")
    search.add_argument("--rescore", type=int, default=4, help="binary: rescore k x this many Hamming candidates with the float query (1: off)")
    search.add_argument("--device", choices=["cpu", "cuda"], help="where the query is embedded")
    search.add_argument("--exact", action="store_true", help="scan every vector even where an index of the form is built")
    search.add_argument("--trust-remote-code", action="store_true",
                        help="let the store's model run code shipped in its folder (auto_map), as its run was allowed to; only for models you trust")
    search.add_argument("--json", dest="json_path", metavar="PATH", help="also write the hits as JSON here")

    index = sub.add_parser("index", help="build an approximate index of a stored form, used by search and eval (needs wikiembed[index])")
    index.add_argument("--store", required=True)
    index.add_argument("--form", default="float32", help="stored form to index: float32 (default), float16, int8, binary, or e.g. int8@128")
    index.add_argument("--json", dest="json_path", metavar="PATH", help="also write what was built as JSON here")

    ev = sub.add_parser("eval", help="retrieval check on your judged queries (--queries), else titles as queries: recall, MRR, nDCG")
    ev.add_argument("--store", required=True)
    ev.add_argument("--queries", metavar="FILE", help="jsonl or parquet: \"query\" with its relevant \"id\", \"ids\" or \"id\" + "
                    "\"chunk_index\" (default: titles of --sample articles)")
    ev.add_argument("--sample", type=int, default=500, help="articles drawn at random (default 500)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--forms", default="float32", help="stored forms to check, comma-separated, or all (default float32)")
    ev.add_argument("--rescore", type=int, default=4, help="binary: rescoring multiplier (1: Hamming only)")
    ev.add_argument("--against", help="a second store of the same source, checked on the same articles")
    ev.add_argument("--device", choices=["cpu", "cuda"], help="where the queries are embedded")
    ev.add_argument("--no-record", action="store_true", help="do not write eval.json and the dataset card")
    ev.add_argument("--exact", action="store_true", help="scan every vector even where an index of a form is built")
    ev.add_argument("--trust-remote-code", action="store_true",
                    help="let the stores' models run code shipped in their folders (auto_map), as their runs were allowed to; only for models you trust")
    ev.add_argument("--json", dest="json_path", metavar="PATH", help="also write the result as JSON here")

    from wikiembed.finetune import FinetuneSettings
    from wikiembed.improve import ImproveSettings

    ft = sub.add_parser("finetune", help="fine-tune the store's model on judged queries (hard negatives from the store, a held-out share)")
    ft.add_argument("--store", required=True, help="the store: a local folder, or modal:VOLUME/PATH (the fine-tune then runs on a Modal GPU next to it)")
    ft.add_argument("--pairs", required=True, metavar="FILE", help="judged queries, as for eval --queries (modal:VOLUME/PATH for a Volume store)")
    ft.add_argument("--out", required=True, metavar="DIR", help="a new folder for the fine-tuned model (modal:VOLUME/PATH for a Volume store)")
    _add_model_options(ft, FinetuneSettings)
    ft.add_argument("--json", dest="json_path", metavar="PATH", help="also write the result as JSON here")

    imp = sub.add_parser("improve", help="fine-tune, re-embed into a new store, compare on held-out queries, publish only if better")
    _add_model_options(imp, ImproveSettings, skip=("finetune",))
    _add_model_options(imp, FinetuneSettings)
    imp.add_argument("--json", dest="json_path", metavar="PATH", help="also write the result as JSON here")

    from wikiembed.serving.settings import ServeSettings

    serve = sub.add_parser("serve", help="an HTTP search service over the published generation, recording feedback for improve")
    _add_model_options(serve, ServeSettings, skip=("cors_origin",))
    serve.add_argument("--cors-origin", action="append", default=argparse.SUPPRESS, metavar="ORIGIN",
                       help=ServeSettings.model_fields["cors_origin"].description + " Repeat for several.")
    return p


def _print_summary(summary: RunSummary, out=None) -> None:  # noqa: ANN001
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


def _check_outputs(args: argparse.Namespace) -> None:
    """Where a command will write, checked before it does any work: a JSON file named by a folder, or a path on a
    read-only disk, is refused with one message now, not with a traceback after the work (the improve loop's whole
    round). The store an index is written into counts too."""
    from wikiembed.errors import InputError
    from wikiembed.store_location import locate

    for flag, dest in (("--json", "json_path"), ("--summary-json", "summary_json")):
        path = getattr(args, dest, None)
        if not path:
            continue
        target = Path(path).expanduser()
        if target.is_dir():
            raise InputError(f"{flag} {path}: is a folder; give a file name for the JSON, e.g. {target / 'result.json'}.")
        _check_writable(target.parent, flag, path)
    if args.command in ("finetune", "improve") and locate(args.store).files_here:
        _check_writable(Path(args.out).expanduser(), "--out", args.out)
        if args.command == "improve":
            _check_writable(Path(args.new_store).expanduser(), "--new-store", args.new_store)
    if args.command == "index" and locate(args.store).files_here:
        from wikiembed.store import Store

        store = Store.at(args.store)
        if store.gen is not None and store.dir.is_dir():
            _check_writable(store.dir, "--store", args.store, why="the index is written into the store")


def _check_writable(path: Path, flag: str, given: str, why: str = "") -> None:
    """Refuse a path that cannot be written: the folder it is in (or the nearest one that exists) is read-only."""
    from wikiembed.errors import InputError

    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{flag} {given}: {folder} is a file, not a folder; give a path in a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        because = f" ({why})" if why else ""
        raise InputError(f"{flag} {given}: cannot be written{because}: {folder} is read-only here (a read-only mount, or "
                         "no write permission); give a path on a writable disk, or make it writable.")


def _write_json(path: str | None, payload: dict[str, Any] | JsonRecord) -> None:
    """Write a command's result as JSON (a record as its `to_json()`)."""
    if isinstance(payload, JsonRecord):
        payload = payload.to_json()
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=1), encoding="utf-8")


def _cmd_run(args: argparse.Namespace) -> int:
    from wikiembed.flows.embed_dataset import embed_dataset
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
    summary = RunSummary.from_json(_in_flow_thread(embed_dataset, **settings.model_dump()))
    _write_json(args.summary_json, summary)
    _print_summary(summary)
    return EXIT_OK if summary.complete else EXIT_FAILED_SHARDS


def status_payload(store_dir: str, verify: bool = False) -> StatusPayload:
    from wikiembed.volume_store import open_for_reading

    # A local store is shown at its published generation (or the one a STORE/gens/ID path names);
    # an unfinished newer one is reported beside it, never instead of it.
    store = locate(store_dir).open_for_reading()
    manifest = store.read_manifest()
    states = store.states(manifest, verify=verify)
    return StatusPayload(
        store=str(store.root),
        generation=store.gen,
        source=manifest.source.spec,
        model=manifest.model.model_id,
        chunking=manifest.chunking.as_dict(),
        skipped_rows=sum(manifest.skipped.values()),
        skipped=manifest.skipped,
        repaired=manifest.repaired,
        shards=tuple(ShardStatus(s.shard, s.state, s.rows, s.chunks, s.error, s.attempts) for s in states),
        done=sum(s.state == "done" for s in states),
        failed=sum(s.state == "failed" for s in states),
        pending=sum(s.state == "pending" for s in states),
        changed=sum(s.state == "changed" for s in states),
        published=store.pointer("current"),
        building=store.building(),
        # An incremental generation keeps the files of earlier ones that hold its unchanged articles.
        kept=KeptFiles(len(manifest.base), sum(b.live_chunks for b in manifest.base), len({b.gen for b in manifest.base}),
                       tuple(store.verify_base(manifest)) if verify and manifest.base and hasattr(store, "verify_base") else ()),
    )


def _cmd_status(args: argparse.Namespace) -> int:
    payload = status_payload(args.store, verify=args.verify)
    code = EXIT_OK if payload.healthy else EXIT_FAILED_SHARDS
    if args.json:
        print(json.dumps(payload.to_json(), indent=1))
        return code
    published = payload.published
    role = "" if published is None else ", published" if published == payload.generation else f", not published: that is {published}"
    print(f"store {payload.store} (generation {payload.generation}{role})")
    print(f"source {payload.source} | model {payload.model} | chunking {payload.chunking}")
    print(f"{'shard':>6}  {'state':<8} {'rows':>8} {'chunks':>8}  error")
    for s in payload.shards:
        chunks = "" if s.chunks is None else s.chunks
        print(f"{s.shard:>6}  {s.state:<8} {s.rows:>8} {chunks:>8}  {(s.error or '')[:100]}")
    print(f"done {payload.done}, failed {payload.failed}, pending {payload.pending}, skipped rows {payload.skipped_rows}")
    if payload.changed:
        ids = ",".join(str(x.shard) for x in payload.shards if x.state == "changed")
        print(f"changed {payload.changed}: not vouched for by its _done marker (the error column says why); "
              f"`wikiembed rerun --store {shlex.quote(payload.store)} --shards {ids}` redoes them")
    kept = payload.kept
    if kept.files:
        print(f"kept from {kept.generations} earlier generation(s): {kept.chunks:,} chunks of unchanged articles in "
              f"{kept.files} files")
    if kept.damaged:
        print(f"damaged: kept files {', '.join(kept.damaged[:20])} no longer match their markers (sha256); embed the "
              "source again into a new --store")
    if payload.skipped:
        print("skipped rows by reason: " + ", ".join(f"{k}: {v}" for k, v in sorted(payload.skipped.items())))
    if args.verify and payload.healthy:
        print("verified: every done shard's data file matches its marker (sha256)")
    if payload.building:
        print(building_line(payload.store, payload.building))
    return code


def building_line(store: str, building: dict[str, Any]) -> str:
    """One line on an unfinished newer generation: what it is, how far it got, and how to finish or see it."""
    b = building
    if b.get("error"):
        return f"a newer generation {b['generation']} is unfinished and unreadable: {b['error']}"
    return (f"a newer generation {b['generation']} (source {b.get('source')}) is being built beside it: {b['done']} of "
            f"{b['total']} shards done, {b['failed']} failed. The `wikiembed run` that started it, run again, finishes "
            f"and publishes it; `wikiembed status --store {shlex.quote(b['path'])}` shows it. Until then export, upload, "
            "search, eval and index act on the published generation.")


def _note_building(command: str, store_dir: str) -> None:
    """search, eval and index read the published generation; say so on stderr when a newer one is unfinished."""
    from wikiembed.store import Store

    store = Store.at(store_dir)
    building = store.building() if store.root.is_dir() else None
    if building:
        print(f"wikiembed {command}: reading generation {store.gen}, the published one; "
              + building_line(str(store.root), building), file=sys.stderr)


def _cmd_rerun(args: argparse.Namespace) -> int:
    from wikiembed.flows.embed_dataset import rerun_shards
    from wikiembed.settings import parse_shards

    shards = "failed" if args.failed else parse_shards(args.shards)
    summary = RunSummary.from_json(_in_flow_thread(rerun_shards, store=args.store, shards=shards))
    _write_json(args.summary_json, summary)
    _print_summary(summary)
    return EXIT_OK if summary.complete else EXIT_FAILED_SHARDS


def _cmd_publish(args: argparse.Namespace, target: str) -> int:
    from wikiembed.store_location import locate

    kwargs: dict[str, Any] = {"allow_partial": args.allow_partial, "replace": args.replace}
    if args.command == "upload":
        kwargs.update(private=args.private, revision=args.revision, create_pr=args.create_pr)
    result = locate(args.store).publish(target, **kwargs)
    if result.get("building"):
        print(f"wikiembed {args.command}: exported generation {result['generation']}, the published one; "
              + building_line(args.store, result["building"]), file=sys.stderr)
    print(json.dumps(result, indent=1, default=str))
    return EXIT_OK


def _split_list(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _fmt_range(value: float, ci: list[float]) -> str:
    return f"{value:,.0f}" if ci[0] == ci[1] else f"{value:,.0f} [{ci[0]:,.0f}, {ci[1]:,.0f}]"


def _cmd_estimate(args: argparse.Namespace) -> int:
    from wikiembed.estimate import estimate
    from wikiembed.settings import RunSettings

    # Validated and defaulted as a run would be; a --store is opened only for its done shards' rate.
    run = RunSettings(store="", **{name: getattr(args, name) for name in ESTIMATE_OPTIONS if hasattr(args, name)})
    result = estimate(
        run.source, config=run.config, split=run.reading.split, limit=run.limit, columns=run.reading.columns, model=run.model,
        chunker=run.chunking.chunker, chunk_size=run.chunking.chunk_size, chunk_overlap=run.chunking.chunk_overlap,
        prompt_name=run.prompt_name, backends=_split_list(args.backend), gpus=_split_list(args.gpu), containers=args.containers,
        sample=args.sample, seed=args.seed, store=args.store,
    )
    _write_json(args.json_path, result)  # before printing: a reader that leaves early cannot cost the file
    print(f"{result['source']} with {result['model']} ({result['chunking']}):")
    print(f"  articles {result['articles']:,} | chars {_fmt_range(result['chars'], result['chars_ci95'])} | "
          f"chunks {_fmt_range(result['chunks'], result['chunks_ci95'])} | tokens {_fmt_range(result['tokens'], result['tokens_ci95'])}"
          " (95% intervals)")
    print(f"  sample: {result['sample']['how']}")
    for o in result["options"]:
        head = f"  {o['backend']:<6} {o['gpu']:<5} x{o['containers']:<4}"
        if o["gpu_hours"] is None:
            print(f"{head} {o['note']}")
            continue
        usd = f"${o['usd']:,.2f}" if o["usd"] is not None else "$ n/a"
        print(f"{head} {o['gpu_hours']:,.3f} {o['unit'].replace('-hours', '-h')}, {o['wall_minutes']:,.1f} min wall, {usd}  "
              f"[{o['basis']}: {o['rate_chars_per_s']:,.0f} chars/s, {o['rate_date']}]")
        print(f"{' ' * 19}{o['note']}")
    return EXIT_OK


def _cmd_search(args: argparse.Namespace) -> int:
    from wikiembed.search import search

    result = search(args.store, args.query, args.k, form=args.form, rescore=args.rescore, device=args.device, exact=args.exact,
                    trust_remote_code=args.trust_remote_code)
    _write_json(args.json_path, result)  # before printing: a reader that leaves early cannot cost the file
    if result["index_note"]:
        print(f"wikiembed search: warning: {result['index_note']}", file=sys.stderr)
    how = "approximate index" if result["method"] == "index" else "exact scan"
    print(f"{len(result['hits'])} hits for {args.query!r} in {result['chunks_searched']:,} chunks ({result['form']}, {how}, {result['model']})")
    for rank, hit in enumerate(result["hits"], 1):
        snippet = " ".join(hit["text"].split())[:160]
        print(f"{rank:>3}. {hit['score']:.4f}  {hit['title']}  {hit['url']}  [chunk {hit['chunk_index']}, chars {hit['char_start']}-{hit['char_end']}]")
        print(f"     {snippet}")
    return EXIT_OK


def _cmd_index(args: argparse.Namespace) -> int:
    from wikiembed.index_build import build_index

    result = build_index(args.store, args.form)
    _write_json(args.json_path, result)  # before printing: a reader that leaves early cannot cost the file
    print(f"index of {result['form']} ({result['metric']}, {result['scalar']}) over {result['rows']:,} vectors in "
          f"{result['parts']} data files: {result['parts_built']} built ({result['rows_built']:,} rows) in {result['seconds']:.1f}s, "
          f"{result['parts_reused']} reused; {result['bytes'] / 1e6:,.1f} MB in all, this generation's in {result['path']} "
          f"({result['library']})")
    for path in result["removed_older_layout"]:
        print(f"removed {path} (the older layout: one graph for a whole generation)")
    return EXIT_OK


def _cmd_eval(args: argparse.Namespace) -> int:
    from wikiembed.evaluate import METRICS, evaluate

    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    result = evaluate(args.store, sample=args.sample, seed=args.seed, forms=forms, rescore=args.rescore,
                      against=args.against, device=args.device, record=not args.no_record, exact=args.exact,
                      queries=args.queries, trust_remote_code=args.trust_remote_code)
    _write_json(args.json_path, result)  # before printing: a reader that leaves early cannot cost the file
    if result.get("queries_unmatched"):
        print(f"wikiembed eval: warning: {result['queries_unmatched']} of {result['queries_read']} queries name no article "
              f"or chunk of the store ({result['relevant_missing']} relevant items missing); they are left out", file=sys.stderr)
    asked = "judged queries" if result["query"] == "file" else "titles as queries"
    notes = {f["index_note"] for block in (result, result.get("against") or {}) for f in block.get("forms", []) if f["index_note"]}
    for note in sorted(notes):
        print(f"wikiembed eval: warning: {note}", file=sys.stderr)
    for label, block in [("", result), ("against ", result.get("against"))]:
        if not block:
            continue
        print(f"{label}{block['store']} ({block['model']}, {block['chunks']:,} chunks): {block['n']} {asked}")
        print(f"  {'form':<28} {'bytes':>6}  {'recall@1':<22} {'recall@10':<22} {'MRR@10':<22} {'nDCG@10':<22} search")
        for f in block["forms"]:
            cells = [f"{f[m]:.3f} [{f[m + '_ci95'][0]:.3f}, {f[m + '_ci95'][1]:.3f}]" for m in METRICS]
            print(f"  {f['form']:<28} {f['bytes_per_vector']:>6}  {cells[0]:<22} {cells[1]:<22} {cells[2]:<22} {cells[3]:<22} {f['method']}")
    for d in (result.get("difference") or {}).get("forms", []):
        print(f"  difference ({d['form']}, against - store): " + ", ".join(
            f"{m} {d[m]:+.3f} [{d[m + '_ci95'][0]:+.3f}, {d[m + '_ci95'][1]:+.3f}]" for m in ("recall_at_10", "mrr", "ndcg_at_10")))
    return EXIT_OK


def _given(args: argparse.Namespace, model: Any, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The options of a settings model that were given on the command line (the rest take the model's defaults)."""
    return {name: getattr(args, name) for name in model.model_fields if name not in skip and hasattr(args, name)}


def _cmd_finetune(args: argparse.Namespace) -> int:
    from wikiembed.finetune import FinetuneSettings
    from wikiembed.store_location import locate

    settings = FinetuneSettings(**_given(args, FinetuneSettings))
    location = locate(args.store)
    location.check_paths(args.pairs, args.out, flags={"pairs": "--pairs", "out": "--out"})
    # Where the store is: here, or on a Modal GPU next to the store's Volume (the model folder is written there).
    result = location.finetune(args.pairs, args.out, settings)
    _write_json(args.json_path, result)  # before printing: a reader that leaves early cannot cost the file
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


def _cmd_improve(args: argparse.Namespace) -> int:
    from wikiembed.errors import ShardsFailed
    from wikiembed.finetune import FinetuneSettings
    from wikiembed.flows.improve_model import METRIC_NAMES, improve_model
    from wikiembed.improve import ImproveSettings
    from wikiembed.store_location import locate

    settings = ImproveSettings(**_given(args, ImproveSettings, skip=("finetune",)), finetune=_given(args, FinetuneSettings))
    # Before Prefect starts (seconds): every path where the loop can reach it.
    locate(settings.store).check_paths(settings.pairs, settings.out, settings.new_store,
                flags={"pairs": "--pairs", "out": "--out", "new_store": "--new-store"})
    try:
        result = _in_flow_thread(improve_model, summary_on_failure=False, **settings.model_dump())
    except ShardsFailed as exc:  # the re-embed stopped: what it finished is kept, the same command resumes
        _print_summary(RunSummary.from_json(exc.summary), out=sys.stderr)
        print(f"wikiembed improve: {exc}", file=sys.stderr)
        return EXIT_FAILED_SHARDS
    result = ImproveResult.from_json(result)
    _write_json(args.json_path, result)  # before printing: a reader that leaves early cannot cost the file
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
        where = (f"published to {result.published['published']['target']}" if result.published
                 else "no --upload-to given, nothing uploaded")
        print(f"publish ({where}): {result.reason}")
    else:
        print(f"keep: {result.reason}")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from wikiembed.serving.app import Service
    from wikiembed.serving.settings import ServeSettings

    service = Service(ServeSettings(**_given(args, ServeSettings)))
    served = service.served
    print(f"wikiembed serve: generation {served.generation} of {served.root} ({served.model_id}, {served.chunks:,} chunks, "
          f"{served.chosen.name}) on {service.url}" + (f"; feedback to {service.feedback.path}" if service.feedback else ""), flush=True)
    service.run()
    return EXIT_OK


def _in_flow_thread(flow: Callable[..., dict[str, Any]], /, summary_on_failure: bool = True, **params: Any) -> dict[str, Any]:
    """Run a flow in a worker thread and return its summary (also when shards failed, unless `summary_on_failure` is
    false: then `ShardsFailed` is raised), so the main thread keeps the signals: Prefect installs no SIGTERM handler off
    the main thread, and a stop never waits for a shard in flight."""
    from wikiembed.errors import ShardsFailed

    _start_own_api_server()
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome["summary"] = context.run(flow, **params)
        except ShardsFailed as exc:  # the flow run ended Failed; its error carries what it finished
            if summary_on_failure:
                outcome["summary"] = exc.summary
            else:
                outcome["error"] = exc
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="wikiembed-flow", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)  # short waits: signal handlers run between them
    if "error" in outcome:
        raise outcome["error"]
    return outcome["summary"]


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop at once: one line, the temporary server stopped, exit 128 + signal.

    What is on disk stays resumable as after a SIGKILL: data and markers are written to temp
    names and renamed, the store's flock dies with the process, and the temp files this process
    was writing are removed (the next run removes those of dead worker processes)."""

    from wikiembed import atomic

    def stop(signum: int, frame: object) -> None:
        from wikiembed.progress import Progress

        Progress.mute()  # the stop message is the last line, not a progress bar drawn after it
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        print(f"wikiembed: {what}; finished shards are kept, run the same command to resume.", file=sys.stderr, flush=True)
        atomic.remove_unfinished()
        _stop_own_api_server(wait_s=STOP_SERVER_WAIT_S)
        sys.stdout.flush()
        os._exit(128 + signum)  # don't wait for shard threads: their work is redone on resume

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


_OWN_SERVER: list[Any] = []  # the temporary Prefect API server this process started, if any


def _start_own_api_server() -> None:
    """Start the Prefect API this run talks to, unless one is configured (see api_server.py)."""
    from wikiembed.flows.api_server import ApiServer, needs_own_server

    if not _OWN_SERVER and needs_own_server():
        server = ApiServer()
        _OWN_SERVER.append(server)
        # Stopped at exit after Prefect's own exit handlers (registered later, so run earlier)
        # have sent their last logs and events: stopping it first would make them retry for a minute.
        atexit.register(_stop_own_api_server)
        server.start()


def _stop_own_api_server(wait_s: float = 5.0) -> None:
    while _OWN_SERVER:
        _OWN_SERVER.pop().stop(wait_s=wait_s)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "status":
        return _cmd_status(args)
    if args.command == "rerun":
        return _cmd_rerun(args)
    if args.command == "search":
        return _cmd_search(args)
    if args.command == "estimate":
        return _cmd_estimate(args)
    if args.command == "eval":
        return _cmd_eval(args)
    if args.command == "index":
        return _cmd_index(args)
    if args.command == "finetune":
        return _cmd_finetune(args)
    if args.command == "improve":
        return _cmd_improve(args)
    if args.command == "serve":
        return _cmd_serve(args)
    if args.command == "export":
        target = args.to if args.to.startswith(("dir:", "hub:", "modal:")) else f"dir:{args.to}"
        return _cmd_publish(args, target)
    return _cmd_publish(args, args.to)


def main(argv: Sequence[str] | None = None) -> int:
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    args = _parser().parse_args(argv)
    from pydantic import ValidationError

    from wikiembed.errors import WikiembedError

    if args.command in ("run", "rerun", "search", "eval", "finetune", "improve", "serve"):
        # Our progress bar is the one to watch; transformers' weight-loading bar would break its line.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if args.command in ("run", "rerun", "improve"):
        _stop_on_signals()
    try:
        _check_outputs(args)
        from wikiembed.store_location import locate

        if args.command in ("search", "index", "eval", "serve") or (args.command == "finetune" and locate(args.store).files_here):
            for spec in (args.store, getattr(args, "against", None)):
                if spec:
                    locate(spec).check_vectors_here(args.command)
            _note_building(args.command, args.store)
        code = _dispatch(args)
        sys.stdout.flush()  # a reader that left shows up here, not as a traceback in Python's exit handler
        return code
    except BrokenPipeError:
        # `wikiembed search ... | head -1`: the reader took what it wanted and closed the pipe. Nothing
        # else may reach it, not even the final flush, so stdout goes to /dev/null; the exit status
        # is the shell's for a process ended by SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except WikiembedError as exc:
        print(f"wikiembed {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValidationError as exc:
        problems = "; ".join(f"--{[p for p in e['loc'] if isinstance(p, str)][-1].replace('_', '-')}: {e['msg']}" for e in exc.errors())
        print(f"wikiembed {args.command}: error: {problems}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("wikiembed: interrupted; finished shards are kept, run the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
