"""The plan: pick the store generation for this source, snapshot it, fix the shard plan.

A store is one (model, chunking); within it each (source fingerprint, model
revision) is one generation. Computing the fingerprint reads a local source whole
(a Hub source costs one API call for its commit). Same pair as before: resume
it, with no new snapshot. New source fingerprint: build a new generation next to
the published one, reusing vectors of unchanged chunk texts (`wikiembed.reuse_index`),
and promote it atomically when every shard is done. New model revision (a
fine-tune saved over the model's folder, a new Hub commit): the same, but
nothing is reused, since the old vectors come from other weights. What a generation's rows are
(its snapshot and articles table, whole or as a delta on the published one) is written by
`wikiembed.snapshots`.

Touches: the store (manifest, snapshot, pointers) and the source (read).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from importlib import metadata

import pyarrow.parquet as pq

from wikiembed import executors
from wikiembed.compact import CompactSpec, form_by_name, parse_compact, spec_from_manifest
from wikiembed.sources import Source, fingerprint, parse_source, pin
from wikiembed.errors import InputError
from wikiembed.model import ModelInfo, model_info
from wikiembed.settings import DEFAULT_SHARD_ROWS, RunSettings
from wikiembed.chunking import Chunking, make_chunking, plan_shards
from wikiembed.records import Manifest, ModelRecord, ShardPlan, SourceRecord
from wikiembed.snapshots import (
    DELTA_MAX_CHANGED, base_parts, followed_articles, live_articles, snapshot_damage, snapshot_record,
    write_store_snapshot, write_version,
)
from wikiembed.store import Store


@dataclass(frozen=True)
class Prepared:
    """What the flow needs after planning: the generation to fill and how it relates to the last."""

    store: Store
    manifest: Manifest
    previous_gen: str | None  # the published generation vectors can be reused from (incremental)


def _versions() -> dict[str, str]:
    out = {}
    for name in ("wikiembed", "prefect", "torch", "transformers", "sentence-transformers", "datasets", "pyarrow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _identity(model_id: str, chunking: Chunking, compact: CompactSpec | None) -> tuple:
    # The model's revision is not part of a store's identity: a new revision (new weights) is a new
    # generation of the same store, embedded afresh.
    return model_id, chunking, (compact.dimensions, compact.precisions) if compact else ((), ())


def model_record(info: ModelInfo, settings: RunSettings) -> ModelRecord:
    """The manifest's `model`: the model, and everything beside its weights that shapes its vectors.

    The prompts are resolved here, once, from the model's own prompts and the run's
    --prompt-name / --query-prompt-name: every later step (chunker, backends, search) reads them here.
    """
    return ModelRecord(
        model_id=info.model_id,
        revision=info.revision,
        dim=info.dim,
        max_tokens=info.max_tokens,
        document_prompt=info.prompt(settings.prompt_name, "document"),
        query_prompt=info.prompt(settings.query_prompt_name, "query"),
        shape=info.shape(),
    )


# What the engine made before it read a model's whole module list: mean or CLS pooling, nothing
# else. Generations of such models keep their names, so their stores resume as they were.
_PLAIN_SHAPES = ({"pooling": "mean", "include_prompt": True, "dense": [], "truncate_dim": None},
                 {"pooling": "cls", "include_prompt": True, "dense": [], "truncate_dim": None})


def vector_key(model: ModelRecord) -> str:
    """What besides the weights decides a generation's vectors ("" for a plain mean/CLS model with no
    prompt); a change of it is a new generation, embedded afresh."""
    shape = {k: v for k, v in (model.shape or {}).items() if k != "normalize"}
    prompt = model.document_prompt
    if not prompt and (not shape or shape in _PLAIN_SHAPES):
        return ""
    return json.dumps({"prompt": prompt, **(model.shape or {})}, sort_keys=True)


def resolve(settings: RunSettings) -> tuple[Source, ModelInfo, Chunking]:
    """Check the source, model and chunking options without reading data (fast; before Prefect starts).

    A model whose vectors the chosen backend cannot make exactly as sentence-transformers does is
    refused here, by name, before anything is written."""
    source = parse_source(settings.source, settings.config, settings.reading.split, settings.limit, settings.reading.columns)
    try:
        info = model_info(settings.model)
    except (ValueError, OSError) as exc:  # a config file that is not JSON, a file that cannot be read
        raise InputError(
            f"model {settings.model!r}: its files cannot be read ({type(exc).__name__}: {exc}); point --model at a "
            "complete sentence-transformers or transformers model folder (its config.json must be valid JSON)."
        ) from exc
    executors.executor_class(settings.backend).check_model(info, settings.trust_remote_code)
    model_record(info, settings)  # an unknown --prompt-name fails here
    c = settings.chunking
    chunking = make_chunking(c.chunker, c.chunk_size, c.chunk_overlap, info.max_tokens)
    compact = parse_compact(settings.output.dimensions, settings.output.precision, info.dim)
    for name in settings.output.index:
        form_by_name(name, compact, info.dim, flag="--index")
    return source, info, chunking


def check_store(settings: RunSettings, info: ModelInfo, chunking: Chunking) -> None:
    """Refuse a local --store this run cannot use, reading only the store's own small files: a file
    or a folder of someone else's, or a store whose published generation holds another model,
    chunking or set of forms. The CLI calls it before Prefect starts; `prepare` before writing."""
    root = Store(settings.store)
    root.check_root()
    current = root.pointer("current")
    if current is None or not Store(root.root, current).manifest_path.exists():
        return  # nothing published, or a lost manifest that `prepare` rebuilds (or names the run that can)
    published = Store(root.root, current).read_manifest()
    compact = parse_compact(settings.output.dimensions, settings.output.precision, info.dim)
    held = spec_from_manifest(published)
    if _identity(published.model.model_id, published.chunking, held) != _identity(info.model_id, chunking, compact):
        raise InputError(
            f"store {root.root} holds model {published.model.model_id} with chunking "
            f"{published.chunking.as_dict()} and compact forms {held.as_dict() if held else None}; this run asks for "
            f"{info.model_id} with {chunking.as_dict()} and {compact.as_dict() if compact else None}. "
            "One store holds one model, chunking and set of forms: use a new store for this one (--store, or "
            "`-p store=...` for a deployment run such as the sample's)."
        )


def prepare(settings: RunSettings) -> Prepared:
    """Resolve the source, choose the generation, write snapshot + manifest if new."""
    source, info, chunking = resolve(settings)
    check_store(settings, info, chunking)
    root = Store(settings.store)
    root.root.mkdir(parents=True, exist_ok=True)
    source = pin(source)
    fp = fingerprint(source)
    model = model_record(info, settings)
    key = vector_key(model)
    gen = hashlib.sha256(f"{fp}\0{info.revision}".encode() + (f"\0{key}".encode() if key else b"")).hexdigest()[:16]
    compact = parse_compact(settings.output.dimensions, settings.output.precision, info.dim)
    current = root.pointer("current")
    previous: str | None = None  # the published generation whose vectors this one may reuse
    inherited_kind = None
    if current is not None and not Store(root.root, current).manifest_path.exists():
        if current != gen:
            raise InputError(
                f"store {root.root}: the published generation {current} lost its manifest.json, and this run is of "
                f"another source version (or model revision), generation {gen}. Run the `wikiembed run` that made "
                f"{current} (its source and options) first: it rebuilds the manifest from the snapshot and keeps the "
                "done shards; then run this one."
            )
        current_lost = True  # this run made it: the manifest is rebuilt below, from this run's options
    else:
        current_lost = False
    if current is not None and not current_lost:
        published = Store(root.root, current).read_manifest()
        same_vectors = published.model.revision == info.revision and vector_key(published.model) == key
        if current != gen and same_vectors:
            previous = current
            inherited_kind = published.vectors
    target = Store(root.root, gen)
    if target.exists():
        manifest = target.read_manifest()
        if manifest.model != model:
            # Same vectors (the name says so); the record gains what older versions did not write
            # and the query prompt this run names (queries do not shape the stored vectors).
            manifest = manifest.changed(model=model)
            target.write_manifest(manifest)
        recorded = manifest.plan.shard_rows
        if settings.shard_rows not in (None, recorded):
            # Re-planning would re-embed every shard and could leave the store empty
            # mid-run; the recorded plan is kept, and the user picks how to proceed.
            raise InputError(
                f"store {root.root} was planned with --shard-rows {recorded} for this source; this run asks "
                f"for --shard-rows {settings.shard_rows}. Omit --shard-rows (or pass {recorded}) to resume "
                "with the recorded plan, or use a new --store for a new plan."
            )
        if any(st.state != "done" for st in target.states(manifest)) and snapshot_damage(target, manifest):
            # Same fingerprint, same rows: re-reading the source repairs the snapshot the
            # remaining shards are cut from (done shards never read it again).
            if manifest.changes is not None:  # an incremental generation's snapshot holds only what changed
                write_version(source, target, gen, live_articles(Store(root.root, manifest.previous_generation)))
            else:
                write_store_snapshot(source, target)
            manifest = manifest.changed(snapshot=snapshot_record(target))
            target.write_manifest(manifest)
        _point(root, current, gen)
        target.clean_temp_files()
        return Prepared(target, manifest, previous)
    # A generation folder without its manifest (lost, or a run killed while creating it): its done
    # shards are kept when the plan rebuilt from this run's options cuts the same rows.
    kept = _done_rows(target)
    if kept and target.dropped_path.exists():
        raise InputError(
            f"store {root.root}: generation {gen} was an incremental one (its own shards hold only the articles that "
            f"changed) and its manifest.json is lost, so its done shards cannot be told apart from a full plan's; delete "
            f"the folder {target.dir} and run the same command again: it embeds that version anew."
        )
    recorded = None if current_lost else _recorded_shard_rows(root, current)
    target.ensure_writable()
    # A new version of the published source: only the articles added or edited since are this
    # generation's own rows; the rest stay in the files that hold them (`base_parts`). A full
    # generation where that is not possible or no longer pays (`followed_articles`).
    old = followed_articles(Store(root.root, previous)) if previous and not kept else None
    report, diff = write_version(source, target, gen, old)
    changes = diff.finish() if diff is not None else None
    if diff is not None and sum(changes.values()) > DELTA_MAX_CHANGED * max(len(diff.old), 1):
        report, diff = write_version(source, target, gen, None)[0], None
    rows = pq.ParquetFile(target.snapshot_path).metadata.num_rows
    shard_rows = _shard_rows_for(root, settings.shard_rows, kept, rows, recorded)
    settings = settings.model_copy(update={"shard_rows": shard_rows})
    base = base_parts(Store(root.root, previous), target, diff) if diff is not None else []
    if rows == 0 and not base:
        shutil.rmtree(target.dir, ignore_errors=True)  # made by this call, holds nothing
        why = ", ".join(f"{reason}: {n}" for reason, n in sorted(report.skipped.items())) or "no rows"
        raise InputError(
            f"--source {settings.source}: every row was skipped ({why}), so there is nothing to embed; "
            "fix those rows, or map your columns with --columns (e.g. --columns text=body,id=page_id)."
        )
    manifest = Manifest(
        source=SourceRecord(**source.as_dict(), fingerprint=fp),
        model=model,
        chunking=chunking,
        compact=compact.as_dict() if compact else None,
        settings=settings.model_dump(),
        plan=ShardPlan(shard_rows=shard_rows, rows=rows, shards=plan_shards(rows, shard_rows)),
        snapshot=snapshot_record(target),
        skipped=dict(report.skipped),
        skipped_examples=report.examples,
        repaired=dict(report.repaired),
        versions=_versions(),
        generation=gen,
        previous_generation=previous,
        base=base,
        changes=changes,
        # The kind of vectors this generation holds (see wikiembed.embedding): the published
        # generation's when vectors carry over, else set by the first shard embedded.
        vectors=inherited_kind,
    )
    target.write_manifest(manifest)
    _point(root, current, gen)
    return Prepared(target, manifest, previous)


def _done_rows(store: Store) -> dict[int, int]:
    """{shard: rows} of the done markers a generation folder holds (none for a new generation)."""
    out = {}
    for path in sorted((store.dir / "_done").glob("*.json")) if (store.dir / "_done").is_dir() else []:
        try:
            marker = json.loads(path.read_text(encoding="utf-8"))
            out[int(path.stem)] = int(marker["rows"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a readable marker: that shard is simply not done
    return out


def _shard_rows_for(root: Store, asked: int | None, kept: dict[int, int], rows: int, recorded: int | None) -> int:
    """The shard size of a new plan: the one asked for, else one that cuts every kept shard's rows as
    its marker records them (a rebuilt manifest), else the store's recorded one, else the default."""
    if not kept:
        return asked or recorded or DEFAULT_SHARD_ROWS
    candidates = [asked] if asked else [max(kept.values()), recorded, DEFAULT_SHARD_ROWS]
    for size in candidates:
        if size:
            plan = plan_shards(rows, size)
            if all(k < len(plan) and plan[k][1] - plan[k][0] == n for k, n in kept.items()):
                return size
    raise InputError(
        f"store {root.root}: a generation's manifest.json is being rebuilt, but its {len(kept)} done shard(s) were not cut "
        f"with {'--shard-rows ' + str(asked) if asked else 'the shard size this run can tell'} (shard {min(kept)} holds "
        f"{kept[min(kept)]} rows); pass the --shard-rows of the run that made them to keep them, or use a new --store."
    )


def _recorded_shard_rows(root: Store, current: str | None) -> int | None:
    """The published generation's shard size: a new source version keeps the store's plan."""
    if current is None:
        return None
    return int(Store(root.root, current).read_manifest().plan.shard_rows)


def _point(root: Store, current: str | None, gen: str) -> None:
    """First generation: publish at once. Later ones: build under `next`; drop abandoned ones."""
    if current is None:
        root.set_pointer("current", gen)
    elif current != gen:
        root.set_pointer("next", gen)
    else:
        root.set_pointer("next", None)
    _drop_unused(root, {current, gen})


def _drop_unused(root: Store, live: set[str | None]) -> None:
    """Delete every generation folder but the `live` ones and those whose files they keep (`base`); of a
    generation kept only for its files, only its data and markers stay (its chunk files go)."""
    keep = {g for g in live if g}
    held: set[str] = set()
    for g in keep:
        path = root.root / "gens" / g / "manifest.json"
        if path.exists():
            held |= {b.gen for b in Store(root.root, g).read_manifest().base}
    for old in (root.root / "gens").glob("*"):
        if not old.is_dir() or old.name in keep:
            continue
        if old.name in held:
            shutil.rmtree(old / "chunks", ignore_errors=True)
        else:
            shutil.rmtree(old, ignore_errors=True)


def promote(store: Store) -> bool:
    """Publish a completed `next` generation: one atomic symlink swap, then drop the old one (all but
    the files the new one keeps)."""
    root = Store(store.root)
    nxt, current = root.pointer("next"), root.pointer("current")
    if nxt is None or nxt != store.gen:
        return False
    root.set_pointer("current", nxt)
    root.set_pointer("next", None)
    if current and current != nxt:
        _drop_unused(root, {nxt})
    return True
