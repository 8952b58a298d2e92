"""`wikiembed status`: a store's shards, and the line on a newer generation being built that other commands print too.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from wikiembed.flows.commands.base import EXIT_FAILED_SHARDS, EXIT_OK, Command
from wikiembed.results import Building, KeptFiles, ShardStatus, StatusPayload


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--verify", action="store_true", help="hash every done shard's data file (slow, thorough)")


def status_payload(store_dir: str, verify: bool = False) -> StatusPayload:
    from wikiembed.store_location import locate

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


def building_line(store: str, building: Building) -> str:
    """One line on an unfinished newer generation: what it is, how far it got, and how to finish or see it."""
    b = building
    if b.error:
        return f"a newer generation {b.generation} is unfinished and unreadable: {b.error}"
    return (f"a newer generation {b.generation} (source {b.source}) is being built beside it: {b.done} of "
            f"{b.total} shards done, {b.failed} failed. The `wikiembed run` that started it, run again, finishes "
            f"and publishes it; `wikiembed status --store {shlex.quote(b.path)}` shows it. Until then export, upload, "
            "search, eval and index act on the published generation.")


def note_building(command: str, store_dir: str) -> None:
    """search, eval and index read the published generation; say so on stderr when a newer one is unfinished."""
    from wikiembed.store import Store

    store = Store.at(store_dir)
    building = store.building() if store.root.is_dir() else None
    if building:
        print(f"wikiembed {command}: reading generation {store.gen}, the published one; "
              + building_line(str(store.root), building), file=sys.stderr)


STATUS = Command(
    "status",
    "per-shard state of a store",
    _status_arguments,
    _cmd_status,
)
