"""The download step: resolve a source, fingerprint it, and write a clean snapshot.

Sources: `sample:N` (built in, no network), a local parquet / UTF-8 JSON Lines file or
folder (JSON Lines plain or .gz/.bz2/.xz), a `datasets` `save_to_disk` folder, or a Hugging
Face dataset id with a config. Each format is one reader module in this package (`sample`,
`parquet`, `jsonl`, `disk`, `hub`), a `base.SourceReader` that registers itself; `parse_source`
asks the registered readers which one takes a `--source`, and everything after goes to that
reader (`reader_for(source.kind)`). A Hub source is pinned first (`pin`): to the repo's current
commit, with `latest.<lang>` resolved to the newest `YYYYMMDD.<lang>` config there, so
its fingerprint (the config's data files, by content id) and its rows come from
the same revision. Every source ends as `STORE/snapshot/source.parquet` with string
columns `id, url, title, text`, written in fixed row groups so shards can be
read as contiguous row ranges. Bad rows are skipped or repaired row by row
and counted (`cleaning`); a bad source (missing, unreadable, wrong columns) is an
`InputError` that names it and the fix.

Another format (CSV, a database table) is one new module: subclass `SourceReader`, then
`register(Reader())`, or from another package an entry point `kind = "package.module:Reader"` in
the `wikiembed.sources` group; `--source` values it takes are then read with it.

Touches: the source (read only) and `STORE/snapshot/` (written via temp + rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from wikiembed.atomic import atomic_path
from wikiembed.errors import InputError
from wikiembed.read_ahead import read_ahead
from wikiembed.sources.base import (
    MAX_SKIP_EXAMPLES, OPTIONAL, REQUIRED, SNAPSHOT_ROW_GROUP, SNAPSHOT_SCHEMA, RowReport, Source, SourceReader,
    names, reader_for, readers, register, streamed, unregister,
)
from wikiembed.sources.cleaning import _Cleaner, _SeenIds, clean_rows

# The built-in formats, in the order `parse_source` asks them.
from wikiembed.sources import sample as _sample, parquet as _parquet, jsonl as _jsonl, disk as _disk, hub as _hub  # noqa: E402,F401
from wikiembed.sources.hub import LATEST_PREFIX, _hub_offline_error, hub_data_files, newest_config  # noqa: E402
from wikiembed.sources.jsonl import JSONL_SUFFIXES  # noqa: E402

__all__ = [
    "LATEST_PREFIX", "JSONL_SUFFIXES", "MAX_SKIP_EXAMPLES", "OPTIONAL", "REQUIRED", "SNAPSHOT_ROW_GROUP",
    "SNAPSHOT_SCHEMA", "RowReport", "Source", "SourceReader", "clean_rows", "fingerprint", "hub_data_files",
    "newest_config", "parse_columns", "parse_source", "pin", "read_snapshot_rows", "read_source", "read_tables",
    "reader_for", "readers", "register", "streamed", "unregister", "write_snapshot",
]

# Rows per table read from an Arrow source (parquet, save_to_disk) on its way into the snapshot.
_ARROW_BATCH = 8192


def parse_columns(mapping: str | dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    """`"text=body,id=page_id"` (ours=theirs) into a normalized tuple."""
    if not mapping:
        return ()
    if isinstance(mapping, str):
        pairs = {}
        for part in mapping.split(","):
            if "=" not in part:
                raise InputError(f"--columns {mapping!r}: expected ours=theirs pairs like 'text=body,id=page_id'.")
            ours, theirs = (s.strip() for s in part.split("=", 1))
            pairs[ours] = theirs
        mapping = pairs
    bad = set(mapping) - set(REQUIRED + OPTIONAL)
    if bad:
        raise InputError(f"--columns: unknown target column(s) {sorted(bad)}; map onto id, url, title, text.")
    return tuple(sorted(mapping.items()))


def parse_source(
    spec: str,
    config: str | None = None,
    split: str = "train",
    limit: int | None = None,
    columns: str | dict[str, str] | None = None,
) -> Source:
    """Classify `--source` into a `Source`; raises `InputError` for what cannot be a source. The readers
    are asked in order: a spec of a format's own (`sample:N`), then an existing file or folder, then a
    remote id."""
    if limit is not None and limit < 0:
        raise InputError(f"--limit {limit}: must be a positive number of rows.")
    cols = parse_columns(columns)
    known = readers()
    for reader in known:
        named = reader.parse(spec, config, split, limit, cols)
        if named is not None:
            return named
    path = Path(spec).expanduser()
    if path.exists():
        reader = _local_reader(path, known)
        return Source(spec, reader.kind, str(path.resolve()), config, split, limit, cols)
    looks_local = spec.startswith((".", "/", "~")) or spec.endswith((".parquet", ".jsonl", ".json")) or spec.count("/") != 1
    remote = None if looks_local else next((r for r in known if r.takes_remote(spec)), None)
    if remote is None:
        raise InputError(
            f"--source {spec!r}: no such file or folder. Give sample:N, a parquet/jsonl file or folder, "
            "a datasets save_to_disk folder, or a Hugging Face dataset id with --config "
            "(e.g. --source wikimedia/wikipedia --config 20231101.simple)."
        )
    return Source(spec, remote.kind, spec, config, split, limit, cols)


def _local_reader(path: Path, known: list[SourceReader]) -> SourceReader:
    """The reader of an existing file (by its name) or folder (by what it holds)."""
    if path.is_file():
        found = next((r for r in known if r.takes_file(path)), None)
        if found is None:
            hints = " or ".join(r.file_hint for r in known if r.file_hint)
            raise InputError(
                f"--source {path}: unsupported file type {''.join(path.suffixes[-2:]) or path.suffix.lower()!r}; use {hints}."
            )
        return found
    claimed = next((r for r in known if r.claims_folder(path)), None)
    if claimed is not None:
        return claimed
    held = [(r, r.folder_files(path)) for r in known]
    mixed = [(r, files) for r, files in held if files]
    if len(mixed) > 1:
        # One folder, one format: reading only one kind would drop the other's rows silently.
        (a, a_files), (b, b_files) = mixed[:2]
        raise InputError(
            f"--source {path}: the folder mixes {a.folder_label} ({names(a_files)}) and {b.folder_label} "
            f"({names(b_files)}); give one kind per source: move one kind to its own folder, or convert it."
        )
    found = next((r for r, files in held if r.takes_folder(path, files)), None)
    if found is None:
        raise InputError(
            f"--source {path}: folder holds no .parquet, .jsonl or datasets save_to_disk files; "
            "point at a folder of parquet/jsonl files or a save_to_disk folder."
        )
    return found


def pin(source: Source) -> Source:
    """A Hub source fixed to one commit (the repo's current one unless already pinned), with
    `latest.<lang>` resolved to the newest `YYYYMMDD.<lang>` config at that commit. Other
    sources are returned as they are (`SourceReader.pin`)."""
    return reader_for(source.kind).pin(source)


def fingerprint(source: Source) -> str:
    """A content fingerprint: equal fingerprints mean equal rows, so the shard plan can be reused."""
    h = hashlib.sha256()
    h.update(json.dumps({"kind": source.kind, "limit": source.limit, "columns": source.columns, "split": source.split}).encode())
    reader_for(source.kind).fingerprint(source, h)
    return h.hexdigest()


def read_source(source: Source, report: RowReport) -> Iterator[dict[str, str]]:
    """All clean rows of a source, streaming, in source order."""
    raw = reader_for(source.kind).batches(source, report)
    first = True
    for row in clean_rows(raw, source, report):
        first = False
        yield row
    if first and report.rows == 0 and not report.skipped:
        raise InputError(f"--source {source.spec}: it holds no rows; check the path, --split or --limit.")


def read_tables(source: Source, report: RowReport) -> Iterator[pa.Table]:
    """All clean rows of a source as tables of SNAPSHOT_SCHEMA, streaming, in source order: the rows
    `read_source` gives. A parquet or `save_to_disk` source is read in Arrow, and its rows that need no
    check or repair of their own never become Python objects (`_Cleaner.table`)."""
    raw = reader_for(source.kind).tables(source, _ARROW_BATCH)
    if raw is None:  # a format without an Arrow path: its clean rows, in tables
        rows: list[dict[str, str]] = []
        for row in read_source(source, report):
            rows.append(row)
            if len(rows) == _ARROW_BATCH:
                yield pa.Table.from_pylist(rows, SNAPSHOT_SCHEMA)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, SNAPSHOT_SCHEMA)
        return
    cleaner = _Cleaner(source, report)
    # The next batch is decoded (without the GIL) while this one is cleaned and hashed.
    with contextlib.closing(read_ahead(raw)) as tables:
        for table in tables:
            clean = cleaner.table(table)
            if clean is None:
                break
            if clean.num_rows:
                yield clean
    if report.rows == 0 and not report.skipped:
        raise InputError(f"--source {source.spec}: it holds no rows; check the path, --split or --limit.")


def write_snapshot(source: Source, dest: Path, select: Callable[[pa.Table], pa.Table] | None = None) -> RowReport:
    """Write the source's clean rows to `dest` (temp file, then atomic rename); with `select`, only
    the rows it returns of each table of clean rows it is shown (in order: an incremental run keeps
    only the articles that changed, `wikiembed.articles.Diff`)."""
    report = RowReport()
    with atomic_path(dest) as tmp, pq.ParquetWriter(tmp, SNAPSHOT_SCHEMA, compression="zstd") as writer:
        pending: list[pa.Table] = []
        held = 0
        for table in read_tables(source, report):
            chosen = select(table) if select is not None else table
            if not chosen.num_rows:
                continue
            pending.append(chosen)
            held += chosen.num_rows
            while held >= SNAPSHOT_ROW_GROUP:  # row groups of exactly SNAPSHOT_ROW_GROUP rows (shards read them by number)
                joined = pa.concat_tables(pending)
                writer.write_table(joined.slice(0, SNAPSHOT_ROW_GROUP).combine_chunks())
                pending, held = [joined.slice(SNAPSHOT_ROW_GROUP)], held - SNAPSHOT_ROW_GROUP
        if held:
            writer.write_table(pa.concat_tables(pending).combine_chunks())
    return report


def read_snapshot_rows(path: Path, start: int, end: int) -> pa.Table:
    """Rows `[start, end)` of a snapshot, reading only the row groups that hold them."""
    pf = pq.ParquetFile(path)
    first, last = start // SNAPSHOT_ROW_GROUP, (end - 1) // SNAPSHOT_ROW_GROUP
    groups = list(range(first, min(last, pf.num_row_groups - 1) + 1))
    table = pf.read_row_groups(groups)
    offset = start - first * SNAPSHOT_ROW_GROUP
    return table.slice(offset, end - start)
