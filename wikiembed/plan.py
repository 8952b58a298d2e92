"""The plan: pick the store generation for this source, snapshot it, fix the shard plan.

A store is one (model, chunking); within it each (source fingerprint, model
revision) is one generation. Computing the fingerprint reads a local source whole
(a Hub source costs one API call for its commit). Same pair as before: resume
it, with no new snapshot. New source fingerprint: build a new generation next to
the published one, reusing vectors of unchanged chunk texts (`VectorIndex`),
and promote it atomically when every shard is done. New model revision (a
fine-tune saved over the model's folder, a new Hub commit): the same, but
nothing is reused, since the old vectors come from other weights.

Touches: the store (manifest, snapshot, pointers) and the source (read).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wikiembed.atomic import atomic_path
from wikiembed.checkpoint import read_vectors, text_key
from wikiembed.compact import form_by_name, parse_compact
from wikiembed.sources import Source, fingerprint, parse_source, pin, write_snapshot
from wikiembed.errors import InputError, StoreError
from wikiembed.model import ModelInfo, model_info
from wikiembed.settings import DEFAULT_SHARD_ROWS, RunSettings
from wikiembed.chunking import Chunking, make_chunking, plan_shards
from wikiembed.store import Store, sha256_file


@dataclass(frozen=True)
class Prepared:
    """What the flow needs after planning: the generation to fill and how it relates to the last."""

    store: Store
    manifest: dict[str, Any]
    previous_gen: str | None  # the published generation vectors can be reused from (incremental)


def _versions() -> dict[str, str]:
    out = {}
    for name in ("wikiembed", "prefect", "torch", "transformers", "sentence-transformers", "datasets", "pyarrow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _identity(manifest: dict[str, Any]) -> tuple:
    compact = manifest.get("compact") or {}
    # The model's revision is not part of a store's identity: a new revision (new weights) is a new
    # generation of the same store, embedded afresh.
    return (
        manifest["model"]["model_id"],
        tuple(sorted(manifest["chunking"].items())),
        (tuple(compact.get("dimensions") or ()), tuple(compact.get("precisions", ()))),
    )


def resolve(settings: RunSettings) -> tuple[Source, ModelInfo, Chunking]:
    """Check the source, model and chunking options without reading data (fast; before Prefect starts)."""
    source = parse_source(settings.source, settings.config, settings.reading.split, settings.limit, settings.reading.columns)
    info = model_info(settings.model)
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
    if current is None:
        return
    published = Store(root.root, current).read_manifest()
    compact = parse_compact(settings.output.dimensions, settings.output.precision, info.dim)
    asked = {"model": {"model_id": info.model_id}, "chunking": chunking.as_dict(), "compact": compact.as_dict() if compact else None}
    if _identity(published) != _identity(asked):
        raise InputError(
            f"store {root.root} holds model {published['model']['model_id']} with chunking "
            f"{published['chunking']} and compact forms {published.get('compact')}; this run asks for "
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
    gen = hashlib.sha256(f"{fp}\0{info.revision}".encode()).hexdigest()[:16]
    model = {"model_id": info.model_id, "revision": info.revision, "dim": info.dim, "max_tokens": info.max_tokens}
    compact = parse_compact(settings.output.dimensions, settings.output.precision, info.dim)
    current = root.pointer("current")
    previous: str | None = None  # the published generation whose vectors this one may reuse
    inherited_kind = None
    if current is not None:
        published = Store(root.root, current).read_manifest()
        if current != gen and published["model"]["revision"] == info.revision:
            previous = current
            inherited_kind = published.get("vectors")
    target = Store(root.root, gen)
    if target.exists():
        manifest = target.read_manifest()
        recorded = manifest["plan"]["shard_rows"]
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
            write_snapshot(source, target.snapshot_path)
            manifest = {**manifest, "snapshot": _snapshot_record(target)}
            target.write_manifest(manifest)
        _point(root, current, gen)
        target.clean_temp_files()
        return Prepared(target, manifest, previous)
    shard_rows = settings.shard_rows or _recorded_shard_rows(root, current) or DEFAULT_SHARD_ROWS
    settings = settings.model_copy(update={"shard_rows": shard_rows})
    target.ensure_writable()
    report = write_snapshot(source, target.snapshot_path)
    rows = pq.ParquetFile(target.snapshot_path).metadata.num_rows
    if rows == 0:
        shutil.rmtree(target.dir, ignore_errors=True)  # made by this call, holds nothing
        why = ", ".join(f"{reason}: {n}" for reason, n in sorted(report.skipped.items())) or "no rows"
        raise InputError(
            f"--source {settings.source}: every row was skipped ({why}), so there is nothing to embed; "
            "fix those rows, or map your columns with --columns (e.g. --columns text=body,id=page_id)."
        )
    manifest = {
        "source": {**source.as_dict(), "fingerprint": fp},
        "model": model,
        "chunking": chunking.as_dict(),
        "compact": compact.as_dict() if compact else None,
        "settings": settings.model_dump(),
        "plan": {"shard_rows": shard_rows, "rows": rows, "shards": plan_shards(rows, shard_rows)},
        "snapshot": _snapshot_record(target),
        "skipped": dict(report.skipped),
        "skipped_examples": report.examples,
        "repaired": dict(report.repaired),
        "versions": _versions(),
        "generation": gen,
        "previous_generation": previous,
        # The kind of vectors this generation holds (see wikiembed.checkpoint): the published
        # generation's when vectors carry over, else set by the first shard embedded.
        "vectors": inherited_kind,
    }
    target.write_manifest(manifest)
    _point(root, current, gen)
    return Prepared(target, manifest, previous)


def _snapshot_record(store: Store) -> dict[str, Any]:
    return {"sha256": sha256_file(store.snapshot_path), "bytes": store.snapshot_path.stat().st_size}


def snapshot_damage(store: Store, manifest: dict[str, Any]) -> str | None:
    """What is wrong with a generation's snapshot (missing, unreadable, changed), or None."""
    path = store.snapshot_path
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
        if rows != manifest["plan"]["rows"]:
            return f"it holds {rows} rows, the plan {manifest['plan']['rows']}"
        recorded = manifest.get("snapshot", {}).get("sha256")
        if recorded and sha256_file(path) != recorded:
            return "its sha256 differs from the one recorded when it was written"
    except (OSError, pa.ArrowException) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_snapshot(store: Store, manifest: dict[str, Any]) -> None:
    """Refuse to cut shards from a damaged snapshot, naming the command that repairs it."""
    damage = snapshot_damage(store, manifest)
    if damage:
        raise StoreError(
            f"store {store.root}: the snapshot {store.snapshot_path} is damaged ({damage}). Run the same "
            f"`wikiembed run --source {shlex.quote(manifest['source']['spec'])} ...` command again: it re-reads the source, "
            "rewrites the snapshot and keeps every done shard."
        )


def _recorded_shard_rows(root: Store, current: str | None) -> int | None:
    """The published generation's shard size: a new source version keeps the store's plan."""
    if current is None:
        return None
    return int(Store(root.root, current).read_manifest()["plan"]["shard_rows"])


def _point(root: Store, current: str | None, gen: str) -> None:
    """First generation: publish at once. Later ones: build under `next`; drop abandoned ones."""
    if current is None:
        root.set_pointer("current", gen)
    elif current != gen:
        root.set_pointer("next", gen)
    else:
        root.set_pointer("next", None)
    keep = {current, gen}
    for old in (root.root / "gens").glob("*"):
        if old.name not in keep and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def promote(store: Store) -> bool:
    """Publish a completed `next` generation: one atomic symlink swap, then drop the old one."""
    root = Store(store.root)
    nxt, current = root.pointer("next"), root.pointer("current")
    if nxt is None or nxt != store.gen:
        return False
    root.set_pointer("current", nxt)
    root.set_pointer("next", None)
    if current and current != nxt:
        shutil.rmtree(root.root / "gens" / current, ignore_errors=True)
    return True


class VectorIndex:
    """Vectors of the published generation, found by chunk-text content key.

    Keys are 16-byte blake2b digests held in one sorted numpy array (about 24
    bytes per chunk: ~1 GB for all of English Wikipedia); vectors are read
    from the old data files on demand, a few files cached at a time. Building the
    keys reads every old chunk text; `save` keeps them next to that generation's
    data, and every later index of it (another worker process, a Modal container)
    loads them instead.
    """

    _CACHE_FILES = 4
    # The saved index, in the indexed generation's folder (`save`): keys, where, files and the
    # fingerprint of the data files it was built from (each done shard's sha256).
    SAVED = "reuse-index.npz"

    def __init__(self, store: Store) -> None:
        self.store = store
        self._fingerprint = ""
        self._saved = False
        self._keys: np.ndarray | None = None
        self._where: np.ndarray | None = None  # (file index, row) per key
        self._files: list[int] = []
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # shard tasks run as threads and share one index

    def _done(self) -> tuple[list[tuple[int, str]], str]:
        """(shard, data file sha256) of every done shard, what the index covers, and their fingerprint."""
        manifest = self.store.read_manifest()
        found = ((k, self.store.read_done(k)) for k in range(len(manifest["plan"]["shards"])))
        done = [(k, marker["sha256"]) for k, marker in found if marker is not None]
        return done, hashlib.sha256(json.dumps(done).encode()).hexdigest()

    def _build(self) -> None:
        done, fingerprint = self._done()
        if self._load(fingerprint):
            return
        keys, where = [], []
        for k, _ in done:
            texts = pq.read_table(self.store.data_path(k), columns=["text"]).column("text").to_pylist()
            keys.append(np.array([text_key(t) for t in texts], dtype="S16"))
            where.append(np.stack([np.full(len(texts), len(self._files)), np.arange(len(texts))], axis=1))
            self._files.append(k)
        self._keys = np.concatenate(keys) if keys else np.zeros(0, dtype="S16")
        self._where = np.concatenate(where) if where else np.zeros((0, 2), dtype=np.int64)
        order = np.argsort(self._keys, kind="stable")
        self._keys, self._where = self._keys[order], self._where[order]
        self._fingerprint = fingerprint

    def _load(self, fingerprint: str, keys: bool = True) -> bool:
        """Take the saved index if it covers exactly the generation's current data files (with
        `keys` false, only say whether it does: the keys are the bulk of the file)."""
        path = self.store.dir / self.SAVED
        try:
            with np.load(path) as saved:
                if str(saved["fingerprint"]) != fingerprint:
                    return False  # a shard was re-embedded since: the saved keys are stale
                if not keys:
                    return True
                self._keys, self._where, self._files = saved["keys"], saved["where"], saved["files"].tolist()
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return False  # unreadable: rebuilt from the data files, and saved again by save()
        self._fingerprint, self._saved = fingerprint, True
        return True

    def save(self) -> None:
        """Build the index (if needed) and keep it in the generation's folder, so the processes and
        containers that reuse this generation load its keys instead of reading every old chunk text."""
        with self._lock:
            if self._keys is None:
                if self._load(self._done()[1], keys=False):
                    return  # saved already for exactly these data files (a resumed run): nothing to read
                self._build()
            if self._saved:
                return
            with atomic_path(self.store.dir / self.SAVED) as tmp:
                with tmp.open("wb") as fh:
                    np.savez(fh, keys=self._keys, where=self._where, files=np.asarray(self._files, dtype=np.int64),
                             fingerprint=np.asarray(self._fingerprint))  # fmt: skip
            self._saved = True

    def _vectors(self, file_index: int) -> np.ndarray:
        if file_index not in self._cache:
            _, vectors = read_vectors(self.store.data_path(self._files[file_index]))
            self._cache[file_index] = vectors
            while len(self._cache) > self._CACHE_FILES:
                self._cache.popitem(last=False)
        self._cache.move_to_end(file_index)
        return self._cache[file_index]

    def lookup(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self._lookup(texts)

    def _lookup(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self._keys is None:
            self._build()
        assert self._keys is not None and self._where is not None
        query = np.array([text_key(t) for t in texts], dtype="S16")
        pos = np.searchsorted(self._keys, query)
        pos = np.minimum(pos, max(len(self._keys) - 1, 0))
        found = (len(self._keys) > 0) & (self._keys[pos] == query) if len(self._keys) else np.zeros(len(texts), bool)
        dim = None
        out = None
        for i in np.flatnonzero(found):
            f, row = self._where[pos[i]]
            vecs = self._vectors(int(f))
            if out is None:
                dim = vecs.shape[1]
                out = np.zeros((len(texts), dim), dtype=np.float32)
            out[i] = vecs[row]
        if out is None:
            out = np.zeros((len(texts), 0), dtype=np.float32)
        return out, found


def _article_digests(store: Store) -> tuple[np.ndarray, np.ndarray]:
    """(sorted id digests, text digests in the same order) of a generation's snapshot: 32 bytes an article."""
    ids, texts = [], []
    pf = pq.ParquetFile(store.snapshot_path)
    for batch in pf.iter_batches(columns=["id", "text"], batch_size=4096):
        ids.append(np.array([text_key(x) for x in batch.column("id").to_pylist()], dtype="S16"))
        texts.append(np.array([text_key(x) for x in batch.column("text").to_pylist()], dtype="S16"))
    id_arr = np.concatenate(ids) if ids else np.zeros(0, dtype="S16")
    text_arr = np.concatenate(texts) if texts else np.zeros(0, dtype="S16")
    order = np.argsort(id_arr, kind="stable")
    return id_arr[order], text_arr[order]


def diff_generations(old: Store, new: Store) -> dict[str, int]:
    """Articles added, edited and removed between two generations (by id and text content)."""
    old_ids, old_texts = _article_digests(old)
    new_ids, new_texts = _article_digests(new)
    common, old_pos, new_pos = np.intersect1d(old_ids, new_ids, assume_unique=False, return_indices=True)
    edited = int(np.count_nonzero(old_texts[old_pos] != new_texts[new_pos]))
    return {"added": int(len(new_ids) - len(common)), "removed": int(len(old_ids) - len(common)), "edited": edited}
