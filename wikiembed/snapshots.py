"""A generation's source snapshot and articles table: writing them, checking them, diffing two versions.

Planning (`wikiembed.plan`) decides which generation a run fills; this module writes what that
generation's rows are. A full generation's snapshot holds every row of the source; a new version of
the published source holds only the articles added or edited since (`write_version`), and keeps the
published generation's shard files, less the articles edited or removed (`base_parts`), as long as
that pays (`DELTA_MAX_CHANGED`, `MAX_BASE_GENERATIONS`). `snapshot_damage` / `check_snapshot` tell a
damaged snapshot before shards are cut from it; `diff_generations` counts what changed between two.

Touches: the store (a generation's snapshot, articles table and `dropped.parquet`) and the source (read).
"""

from __future__ import annotations

import errno
import shlex

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wikiembed import articles
from wikiembed.atomic import atomic_path
from wikiembed.embedding import text_key
from wikiembed.errors import StoreError
from wikiembed.records import BasePart, Manifest, SnapshotRecord
from wikiembed.sources import RowReport, Source, write_snapshot
from wikiembed.store import Store, sha256_file, store_os_error


def write_store_snapshot(source: Source, store: Store, select=None) -> RowReport:  # noqa: ANN001
    """The source's rows into the generation's snapshot (`select`: see `wikiembed.sources.write_snapshot`);
    a disk that fills up or refuses the write is named with its fix (the temp file is already gone), not
    shown as a traceback."""
    try:
        return write_snapshot(source, store.snapshot_path, select)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise store_os_error(exc, store.snapshot_path) from None


# An incremental generation is a full one again when more than this share of the published one's
# articles changed (a rewrite costs little more then, and keeps readers from skipping many rows), or
# when its files would span more than MAX_BASE_GENERATIONS generations.
DELTA_MAX_CHANGED = 0.3
MAX_BASE_GENERATIONS = 16


def followed_articles(previous: Store) -> "articles.Articles | None":
    """The articles table of the published generation a new source version follows as a delta, or
    None where the new version is a full generation (too many layers already, or no table can be had:
    a generation made before tables were kept, whose snapshot is gone)."""
    manifest = previous.read_manifest()
    if len({b.gen for b in manifest.base} | {previous.gen}) > MAX_BASE_GENERATIONS:
        return None
    path = previous.dir / articles.FILE
    if not path.exists():
        if manifest.base or snapshot_damage(previous, manifest):
            return None
        with atomic_path(path) as tmp, articles.writer(tmp) as out:  # a generation made before tables were kept
            first = 0
            for batch in pq.ParquetFile(previous.snapshot_path).iter_batches(batch_size=4096):
                out.write_table(articles.rows_table(pa.Table.from_batches([batch]), str(previous.gen), first))
                first += batch.num_rows
    try:
        return live_articles(previous, manifest)
    except FileNotFoundError:  # the table of a generation whose files it keeps is gone
        return None


def live_articles(store: Store, manifest: Manifest | None = None) -> articles.Articles:
    """A generation's live articles: the rows of its own articles table and of the tables of the
    generations whose files it keeps (`base`), each less the articles it dropped from them."""
    manifest = manifest or store.read_manifest()
    kept = sorted({b.gen for b in manifest.base} - {str(store.gen)})
    tables = [(g, store.root / "gens" / g / articles.FILE) for g in [str(store.gen), *kept]]
    dropped = pq.read_table(store.dropped_path, columns=["gen", "id"]) if kept and store.dropped_path.exists() else None
    return articles.Articles.of(tables, dropped)


def write_version(source: Source, target: Store, gen: str, old: "articles.Articles | None") -> tuple[RowReport, "articles.Diff | None"]:
    """Write the generation's snapshot and its articles table: every row of the source, or (after a
    published `old` one) only the articles added or edited since; the others stay in the tables of
    the generations that hold them (`live_articles`)."""
    diff = articles.Diff(old) if old is not None else None
    written = 0
    with atomic_path(target.dir / articles.FILE) as tmp, articles.writer(tmp) as table:

        def select(rows: pa.Table) -> pa.Table:
            nonlocal written
            ids, contents = articles.table_keys(rows)
            own = diff.select(ids, contents) if diff is not None else None
            if own is not None and not own.all():
                rows, ids, contents = rows.filter(pa.array(own)), ids[own], contents[own]
            if rows.num_rows:
                table.write_table(articles.rows_table(rows, gen, written, (ids, contents)))
                written += rows.num_rows
            return rows

        report = write_store_snapshot(source, target, select)
    return report, diff


def base_parts(previous: Store, target: Store, diff: "articles.Diff") -> list[BasePart]:
    """The files a generation that follows `previous` keeps: `previous`'s own shards and the ones it
    kept itself, each less the articles edited or removed since (written to `target`'s
    `dropped.parquet`); a file none of whose articles is left is not kept."""
    manifest = previous.read_manifest()
    parts = list(manifest.base) + [
        BasePart(gen=str(previous.gen), shard=p.shard, sha256=p.sha256, bytes=p.bytes, rows=p.rows, chunks=p.chunks,
                 arrow_bytes=p.arrow_bytes)
        for p in previous.parts(manifest) if p.gen == previous.gen
    ]
    # Where each dropped article is: its generation's snapshot row, and so its shard in that generation's plan.
    dropped = diff.old.rows(diff.dropped_rows())
    starts = {}
    for g in set(dropped.column("gen").to_pylist()):
        starts[g] = np.array([a for a, _ in Store(previous.root, g).read_manifest().plan.shards], dtype=np.int64)
    gens = dropped.column("gen").to_numpy(zero_copy_only=False)
    rows = dropped.column("row").to_numpy()
    shard = np.zeros(len(rows), dtype=np.int32)
    for g, first_rows in starts.items():
        at = gens == g
        shard[at] = np.searchsorted(first_rows, rows[at], side="right") - 1
    new = pa.table({"gen": dropped.column("gen"), "shard": pa.array(shard, pa.int32()), "id": dropped.column("id")})
    earlier = pq.read_table(previous.dropped_path) if previous.dropped_path.exists() else new.schema.empty_table()
    every = pa.concat_tables([earlier.select(new.schema.names).cast(new.schema), new])
    with atomic_path(target.dropped_path) as tmp:
        pq.write_table(every, tmp, compression="zstd")
    fresh = {(g, int(k)) for g, k in zip(gens.tolist(), shard.tolist())}
    kept = []
    for part in parts:
        if (part.gen, part.shard) in fresh:
            mask = pc.and_(pc.equal(every["gen"], part.gen), pc.equal(every["shard"], part.shard))
            ids = every.filter(mask).column("id")
            path = previous.root / "gens" / part.gen / "data" / f"{part.shard:05d}.parquet"
            held = pq.read_table(path, columns=["id"]).column("id")
            part = part.changed(dropped_rows=len(ids), dropped_chunks=int(pc.sum(pc.is_in(held, value_set=ids.combine_chunks())).as_py() or 0))
        if part.dropped_rows < part.rows:
            kept.append(part)
    return kept


def snapshot_record(store: Store) -> SnapshotRecord:
    return SnapshotRecord(sha256=sha256_file(store.snapshot_path), bytes=store.snapshot_path.stat().st_size)


def snapshot_damage(store: Store, manifest: Manifest) -> str | None:
    """What is wrong with a generation's snapshot (missing, unreadable, changed), or None."""
    path = store.snapshot_path
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
        if rows != manifest.plan.rows:
            return f"it holds {rows} rows, the plan {manifest.plan.rows}"
        recorded = manifest.snapshot.sha256 if manifest.snapshot else None
        if recorded and sha256_file(path) != recorded:
            return "its sha256 differs from the one recorded when it was written"
    except (OSError, pa.ArrowException) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_snapshot(store: Store, manifest: Manifest) -> None:
    """Refuse to cut shards from a damaged snapshot, naming the command that repairs it."""
    damage = snapshot_damage(store, manifest)
    if damage:
        raise StoreError(
            f"store {store.root}: the snapshot {store.snapshot_path} is damaged ({damage}). Run the same "
            f"`wikiembed run --source {shlex.quote(manifest.source.spec)} ...` command again: it re-reads the source, "
            "rewrites the snapshot and keeps every done shard."
        )


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
    """Articles added, edited and removed between two generations: by their articles tables (id, and
    title, url and text), else (a generation made before tables were kept) by id and text in their
    snapshots."""
    if (old.dir / articles.FILE).exists() and (new.dir / articles.FILE).exists():
        a, b = live_articles(old), live_articles(new)
        common, a_pos, b_pos = np.intersect1d(a.id_key, b.id_key, assume_unique=True, return_indices=True)
        edited = int(np.count_nonzero(a.content_key[a_pos] != b.content_key[b_pos]))
        return {"added": int(len(b) - len(common)), "removed": int(len(a) - len(common)), "edited": edited}
    old_ids, old_texts = _article_digests(old)
    new_ids, new_texts = _article_digests(new)
    common, old_pos, new_pos = np.intersect1d(old_ids, new_ids, assume_unique=False, return_indices=True)
    edited = int(np.count_nonzero(old_texts[old_pos] != new_texts[new_pos]))
    return {"added": int(len(new_ids) - len(common)), "removed": int(len(old_ids) - len(common)), "edited": edited}
