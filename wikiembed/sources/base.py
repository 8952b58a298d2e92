"""What every source format shares: the `Source` a `--source` parses into, the report of what happened to
its rows, the `SourceReader` interface one module per format implements, and the registry that picks a
format's reader by its `kind`.

A format is one module (`wikiembed/sources/jsonl.py` is one) with a `SourceReader` subclass that says
which `--source` it takes (a spec of its own such as `sample:N`, a file by its name, a folder by its
files, or a remote id), how its data is fingerprinted and how its raw rows are read; it makes itself
known with `register(Reader())`. Cleaning, the snapshot and its row groups are the same for every
format (`wikiembed.sources`).
"""

from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from wikiembed.errors import InputError

# Snapshot row groups: shards read whole row groups and slice, so smaller groups
# waste less reading at shard edges; 1,000 Wikipedia articles is ~3 MB of text.
SNAPSHOT_ROW_GROUP = 1000
SNAPSHOT_SCHEMA = pa.schema(
    [("id", pa.string()), ("url", pa.string()), ("title", pa.string()), ("text", pa.string())]
)
REQUIRED = ("id", "text")
OPTIONAL = ("url", "title")
# Examples of skipped rows kept in the manifest (the counts are always complete).
MAX_SKIP_EXAMPLES = 50
# Raw rows a reader hands on at a time (`SourceReader.batches`).
READ_BATCH = 1000
_HASH_BLOCK = 1 << 22
# Readers from other packages: `kind = "package.module:Reader"` in this entry point group.
ENTRY_POINT_GROUP = "wikiembed.sources"


@dataclass(frozen=True)
class Source:
    """A parsed `--source` with its options."""

    spec: str
    kind: str  # the reader's kind: sample | parquet | jsonl | disk | hub, or a registered one
    location: str  # sample size, local path or hub id
    config: str | None = None
    split: str = "train"
    limit: int | None = None
    columns: tuple[tuple[str, str], ...] = ()  # (our name, their name)
    revision: str | None = None  # Hub sources: the commit they are read at (set by `pin`)

    @property
    def reader(self) -> "SourceReader":
        return reader_for(self.kind)

    @property
    def license(self) -> str | None:
        return self.reader.license(self)

    @property
    def description(self) -> str:
        return self.reader.describe(self)

    def as_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "config": self.config,
            "revision": self.revision,
            "split": self.split,
            "limit": self.limit,
            "columns": dict(self.columns),
            "license": self.license,
            "description": self.description,
        }


@dataclass
class RowReport:
    """What happened to rows on the way into the snapshot."""

    rows: int = 0
    skipped: Counter = field(default_factory=Counter)
    repaired: Counter = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def skip(self, index: int, row_id: Any, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < MAX_SKIP_EXAMPLES:
            self.examples.append({"row": index, "id": None if row_id is None else str(row_id)[:200], "reason": reason})


class SourceReader:
    """One source format. `parse_source` asks the registered readers, in order, which one takes a
    `--source`: first `parse` (a spec of the format's own), then, for a path that exists, `takes_file`
    or `claims_folder` / `folder_files` / `takes_folder`, else `takes_remote`. The download step then
    calls `pin`, `fingerprint` and `batches` (or `tables`) of the source's reader."""

    # The name of the format: `Source.kind`, recorded in the manifest and in the fingerprint.
    kind: str = ""
    # What `--source` takes of this format, for messages: "use .parquet or .jsonl (...)".
    file_hint: str = ""
    # What its files are called when a folder mixes formats: "parquet files".
    folder_label: str = ""
    # Raw rows come one by one with whatever keys they have (JSON Lines, a Hub stream): their columns
    # are checked on the first row. A reader with a schema checks it itself, before its first batch.
    checks_first_row: bool = True

    # ---- which --source it takes ----

    def parse(self, spec: str, config: str | None, split: str, limit: int | None,
              columns: tuple[tuple[str, str], ...]) -> Source | None:
        """The source a spec of this format's own names (`sample:N`), else None."""
        return None

    def takes_file(self, path: Path) -> bool:
        """Whether an existing file is of this format (by its name)."""
        return False

    def claims_folder(self, folder: Path) -> bool:
        """Whether a folder says by itself that it is of this format (a `save_to_disk` folder's own files),
        whatever else it holds."""
        return False

    def folder_files(self, folder: Path) -> list[Path]:
        """This format's data files in a folder (a folder holding two formats' files is refused)."""
        return []

    def takes_folder(self, folder: Path, files: list[Path]) -> bool:
        """Whether a folder is a source of this format, given its `folder_files`."""
        return bool(files)

    def takes_remote(self, spec: str) -> bool:
        """Whether a spec that names no local path is a source of this format (a Hub dataset id)."""
        return False

    # ---- reading it ----

    def files(self, source: Source) -> list[Path]:
        """A local source's data files, in the order their rows are read."""
        path = Path(source.location)
        if path.is_file():
            return [path]
        files = self.folder_files(path)
        if not files:
            raise InputError(f"--source {path}: no {source.kind} files found in the folder.")
        return files

    def pin(self, source: Source) -> Source:
        """The source fixed to what it holds now (a Hub source: one commit). Local sources are as they are."""
        return source

    def fingerprint(self, source: Source, digest: Any) -> None:
        """Feed `digest` (a hashlib object) with what the source's rows are: equal digests, equal rows.
        By default: the data files' names and bytes."""
        hash_files(Path(source.location), self.files(source), digest)

    def batches(self, source: Source, report: RowReport) -> Iterator[list[dict]]:
        """The source's raw rows (values as found), in lists of about READ_BATCH, in source order."""
        raise NotImplementedError

    def tables(self, source: Source, batch_size: int) -> Iterator[pa.Table] | None:
        """The source's raw rows as Arrow tables of about `batch_size` rows, or None where the format has
        no Arrow path (its rows then go through `batches`)."""
        return None

    def estimate_sample(self, source: Source, k: int, seed: int) -> tuple[list[dict[str, str]], int, str] | None:
        """For `wikiembed estimate`, where reading the whole source is too much (a Hub dataset): about `k`
        clean rows drawn at random, the source's row count from its metadata, and how they were had.
        None (the default): the estimate reads the whole source and draws from it."""
        return None

    def describe(self, source: Source) -> str:
        return f"local {source.kind} at {source.location}"

    def license(self, source: Source) -> str | None:
        return "cc-by-sa-3.0" if "wikipedia" in source.location.lower() else None


_READERS: dict[str, SourceReader] = {}
_plugins_loaded = False


def register(reader: SourceReader) -> SourceReader:
    """Make a format known: `--source` values it takes are read with it (later registrations of the
    same kind replace earlier ones)."""
    if not reader.kind:
        raise ValueError(f"{type(reader).__name__}: a source reader needs a kind")
    _READERS[reader.kind] = reader
    return reader


def unregister(kind: str) -> None:
    _READERS.pop(kind, None)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _READERS:
            module, _, attr = ep.value.partition(":")
            found = getattr(importlib.import_module(module), attr)
            register(found() if isinstance(found, type) else found)


def readers() -> list[SourceReader]:
    """Every known reader, in the order `parse_source` asks them."""
    _load_plugins()
    return list(_READERS.values())


def reader_for(kind: str) -> SourceReader:
    """The reader of a source's kind."""
    found = _READERS.get(kind)
    if found is None:
        _load_plugins()
        found = _READERS.get(kind)
    if found is None:
        raise InputError(f"source kind {kind!r}: no reader for it; known: {', '.join(_READERS)}.")
    return found


# ---- helpers the readers share ------------------------------------------------


def data_files(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    """Data files under a folder; hidden and `_`-prefixed ones (temp files, metadata) are not data."""
    return sorted({f for pat in patterns for f in folder.rglob(pat) if not f.name.startswith((".", "_"))})


def names(files: list[Path]) -> str:
    return ", ".join(f.name for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")


def hash_files(root: Path, files: Iterable[Path], digest: Any) -> None:
    """Each file's path under `root` (its name, for a file source) and bytes, into `digest`."""
    for f in files:
        digest.update(str(f.relative_to(root) if f != root else f.name).encode())
        try:
            with f.open("rb") as fh:
                while block := fh.read(_HASH_BLOCK):
                    digest.update(block)
        except OSError as exc:
            raise InputError(f"--source {f}: cannot be read ({exc.strerror}); check its permissions.") from exc


def batched(rows: Iterable[dict]) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) == READ_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def their_names(source: Source) -> list[str]:
    mapping = dict(source.columns)
    return [mapping.get(c, c) for c in REQUIRED + OPTIONAL]


def check_columns(source: Source, names: Iterable[str], where: Any) -> None:
    mapping = dict(source.columns)
    missing = [mapping.get(c, c) for c in REQUIRED if mapping.get(c, c) not in set(names)]
    if missing:
        raise InputError(
            f"--source {where}: missing required column(s) {missing} (has {sorted(names)[:20]}); "
            "map yours with --columns, e.g. --columns text=body,id=page_id."
        )


def streamed(path: Path) -> pq.ParquetFile:
    """A parquet file to read from start to end in batches (`iter_batches`), holding about one row
    group at a time. Pyarrow's default pre-buffering keeps the column chunks of every row group it has
    read until the file object is gone: a whole file's compressed bytes by its last batch."""
    return pq.ParquetFile(path, pre_buffer=False)

