"""The download step: resolve a source, fingerprint it, and write a clean snapshot.

Sources: `sample:N` (built in, no network), a local parquet / UTF-8 JSON Lines file or
folder (JSON Lines plain or .gz/.bz2/.xz), a `datasets` `save_to_disk` folder, or a Hugging
Face dataset id with a config. A Hub source is pinned first (`pin`): to the repo's current commit,
with `latest.<lang>` resolved to the newest `YYYYMMDD.<lang>` config there, so
its fingerprint (the config's data files, by content id) and its rows come from
the same revision. Every source ends as `STORE/snapshot/source.parquet` with string
columns `id, url, title, text`, written in fixed row groups so shards can be
read as contiguous row ranges. Bad rows are skipped or repaired row by row
and counted; a bad source (missing, unreadable, wrong columns) is an
`InputError` that names it and the fix.

Touches: the source (read only) and `STORE/snapshot/` (written via temp + rename).
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import hashlib
import json
import lzma
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wikiembed.errors import InputError
from wikiembed import sample
from wikiembed.atomic import atomic_path

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
_READ_BATCH = 1000
# Rows per table read from an Arrow source (parquet, save_to_disk) on its way into the snapshot.
_ARROW_BATCH = 8192
_HASH_BLOCK = 1 << 22
# `--config latest.<lang>` asks for the newest dump of a language among configs named like
# wikimedia/wikipedia's (`20231101.simple`); the date sorts as text.
LATEST_PREFIX = "latest."
_DUMP_CONFIG = re.compile(r"(\d{8})\.(.+)")
_SURROGATE = re.compile("[\ud800-\udfff]")
# JSON Lines files, plain or compressed with a codec of the standard library (opened by suffix).
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_JSONL_PATTERNS = tuple(f"*{s}{c}" for s in JSONL_SUFFIXES if s != ".json" for c in ("", *_COMPRESSED))
# Byte-order marks of encodings JSON Lines must not be in (checked longest first: UTF-32 LE
# starts with UTF-16 LE's mark).
_FOREIGN_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"),
)


@dataclass(frozen=True)
class Source:
    """A parsed `--source` with its options."""

    spec: str
    kind: str  # sample | parquet | jsonl | disk | hub
    location: str  # sample size, local path or hub id
    config: str | None = None
    split: str = "train"
    limit: int | None = None
    columns: tuple[tuple[str, str], ...] = ()  # (our name, their name)
    revision: str | None = None  # Hub sources: the commit they are read at (set by `pin`)

    @property
    def license(self) -> str | None:
        if self.kind == "sample" or "wikipedia" in self.location.lower():
            return "cc-by-sa-3.0"
        return None

    @property
    def description(self) -> str:
        if self.kind == "sample":
            return f"built-in sample of {self.location} Wikipedia-shaped articles"
        if self.kind == "hub":
            at = f", revision {self.revision[:12]}" if self.revision else ""
            return f"{self.location} (config {self.config}, split {self.split}{at})"
        return f"local {self.kind} at {self.location}"

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
    """Classify `--source` into a `Source`; raises `InputError` for what cannot be a source."""
    if limit is not None and limit < 0:
        raise InputError(f"--limit {limit}: must be a positive number of rows.")
    cols = parse_columns(columns)
    if spec.startswith("sample:") or spec == "sample":
        raw = spec.partition(":")[2] or "1000"
        if not raw.isdigit() or int(raw) <= 0:
            raise InputError(f"--source {spec!r}: use sample:N with N a positive integer, e.g. sample:1000.")
        if int(raw) > sample.MAX_ARTICLES:
            raise InputError(
                f"--source {spec!r}: the built-in sample makes at most {sample.MAX_ARTICLES:,} articles (more than English "
                "Wikipedia has: about 12 GB of text, over an hour to write); use a smaller N, or a real source for a "
                "corpus that size."
            )
        return Source(spec, "sample", raw, None, split, limit, cols)
    path = Path(spec).expanduser()
    if path.exists():
        kind = _local_kind(path)
        return Source(spec, kind, str(path.resolve()), config, split, limit, cols)
    looks_local = spec.startswith((".", "/", "~")) or spec.endswith((".parquet", ".jsonl", ".json")) or spec.count("/") != 1
    if looks_local:
        raise InputError(
            f"--source {spec!r}: no such file or folder. Give sample:N, a parquet/jsonl file or folder, "
            "a datasets save_to_disk folder, or a Hugging Face dataset id with --config "
            "(e.g. --source wikimedia/wikipedia --config 20231101.simple)."
        )
    return Source(spec, "hub", spec, config, split, limit, cols)


def _local_kind(path: Path) -> str:
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return "parquet"
        if _is_jsonl(path):
            return "jsonl"
        raise InputError(
            f"--source {path}: unsupported file type {''.join(path.suffixes[-2:]) or suffix!r}; use .parquet or "
            f".jsonl (plain or compressed: {', '.join('.jsonl' + c for c in _COMPRESSED)})."
        )
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return "disk"
    parquet = _data_files(path, ("*.parquet",))
    lines = _data_files(path, _JSONL_PATTERNS)
    unreadable = [f for f in _data_files(path, ("*.jsonl.*", "*.ndjson.*")) if not _is_jsonl(f)]
    if unreadable:
        # Skipping them would drop their rows silently.
        raise InputError(
            f"--source {path}: the folder holds JSON Lines files in a compression wikiembed cannot read "
            f"({_names(unreadable)}); decompress them or recompress them as {', '.join('.jsonl' + c for c in _COMPRESSED)}."
        )
    if parquet and lines:
        # One folder, one format: reading only one kind would drop the other's rows silently.
        raise InputError(
            f"--source {path}: the folder mixes parquet files ({_names(parquet)}) and JSON Lines files "
            f"({_names(lines)}); give one kind per source: move one kind to its own folder, or convert it."
        )
    if parquet:
        return "parquet"
    if lines or _data_files(path, ("*.json",)):
        return "jsonl"
    raise InputError(
        f"--source {path}: folder holds no .parquet, .jsonl or datasets save_to_disk files; "
        "point at a folder of parquet/jsonl files or a save_to_disk folder."
    )


def _is_jsonl(path: Path) -> bool:
    """A JSON Lines file by name: `.jsonl`, `.json`, `.ndjson`, each plain or compressed."""
    name = path.name.lower()
    for codec in ("", *_COMPRESSED):
        if any(name.endswith(s + codec) for s in JSONL_SUFFIXES):
            return True
    return False


def _open_jsonl(path: Path) -> Any:
    """The file's bytes, decompressed by its suffix."""
    opener = _COMPRESSED.get(path.suffix.lower())
    return opener(path, "rb") if opener else path.open("rb")


def _check_encoding(path: Path, head: bytes) -> None:
    """Refuse a JSON Lines file that is not UTF-8: decoded as UTF-8 every line would be skipped.
    JSON text starts with `{`, `[` or whitespace, so a NUL among its first bytes means a wider encoding."""
    found = next((name for bom, name in _FOREIGN_BOMS if head.startswith(bom)), None)
    if found is None and b"\0" in head[:4]:
        found = "UTF-32" if head[:4].count(b"\0") >= 3 else "UTF-16"
    if found:
        raise InputError(
            f"--source {path}: the file is {found}-encoded; JSON Lines must be UTF-8. Convert it, e.g. "
            f"`iconv -f {found} -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}`, and point --source at the result."
        )


def _data_files(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    """Data files under a folder; hidden and `_`-prefixed ones (temp files, metadata) are not data."""
    return sorted({f for pat in patterns for f in folder.rglob(pat) if not f.name.startswith((".", "_"))})


def _names(files: list[Path]) -> str:
    return ", ".join(f.name for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")


def _local_files(source: Source) -> list[Path]:
    path = Path(source.location)
    if path.is_file():
        return [path]
    patterns = ("*.parquet",) if source.kind == "parquet" else (*_JSONL_PATTERNS, "*.json")
    files = _data_files(path, patterns)
    if not files:
        raise InputError(f"--source {path}: no {source.kind} files found in the folder.")
    return files


def _hub_offline_error(source: Source, exc: BaseException) -> InputError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    why = "HF_HUB_OFFLINE=1 is set" if offline else f"the Hub could not be reached ({type(exc).__name__})"
    return InputError(
        f"--source {source.location!r} (config {source.config!r}) needs the Hugging Face Hub, but {why}. "
        "Unset HF_HUB_OFFLINE and check the network, or use a local copy: a parquet/jsonl file or folder, "
        "a datasets save_to_disk folder, or --source sample:N for the built-in sample."
    )


def pin(source: Source) -> Source:
    """A Hub source fixed to one commit (the repo's current one unless already pinned), with
    `latest.<lang>` resolved to the newest `YYYYMMDD.<lang>` config at that commit. Other
    sources are returned as they are."""
    if source.kind != "hub":
        return source
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        sha = HfApi().dataset_info(source.location, revision=source.revision).sha
    except RepositoryNotFoundError as exc:
        raise InputError(
            f"--source {source.location!r}: no such dataset on the Hub (or it is private and HF_TOKEN "
            "cannot read it); check the id, e.g. wikimedia/wikipedia."
        ) from exc
    except RevisionNotFoundError as exc:
        raise InputError(f"--source {source.location!r}: no revision {source.revision!r}; give a branch, tag or commit.") from exc
    except Exception as exc:
        raise _hub_offline_error(source, exc) from exc
    config = source.config
    if config and config.startswith(LATEST_PREFIX):
        config = newest_config(source, config[len(LATEST_PREFIX):], sha)
    return replace(source, config=config, revision=sha)


def newest_config(source: Source, lang: str, revision: str) -> str:
    """The newest `YYYYMMDD.<lang>` config of a Hub dataset at `revision`."""
    import datasets

    try:
        configs = datasets.get_dataset_config_names(source.location, revision=revision)
    except Exception as exc:
        raise _hub_offline_error(source, exc) from exc
    dumps = sorted(c for c in configs if (m := _DUMP_CONFIG.fullmatch(c)) and m.group(2) == lang)
    if not dumps:
        langs = sorted({m.group(2) for c in configs if (m := _DUMP_CONFIG.fullmatch(c))})
        raise InputError(
            f"--config {LATEST_PREFIX}{lang}: {source.location} has no YYYYMMDD.{lang} config at revision "
            f"{revision[:12]} (languages there: {', '.join(langs[:30]) or 'none'}); check the language code, "
            "or name a config such as 20231101.simple."
        )
    return dumps[-1]


def hub_data_files(source: Source) -> list[tuple[str, str]]:
    """(path, content id) of every data file of a pinned Hub source's config and split.

    The content id is the file's LFS sha256, or its git blob id for a small file:
    equal lists mean equal rows, whatever else the repo's commit changed.
    """
    import datasets
    from huggingface_hub import HfApi

    if source.revision is None:
        raise ValueError(f"{source.location}: pin() the Hub source before reading or fingerprinting it")
    try:
        builder = datasets.load_dataset_builder(source.location, source.config, revision=source.revision)
    except ValueError as exc:  # datasets: "BuilderConfig 'x' not found. Available: [...]"
        configs = _configs_or_none(source)
        listing = f"it has {', '.join(configs[:30])}{' ...' if len(configs) > 30 else ''}" if configs else str(exc)
        raise InputError(
            f"--config {source.config!r}: {source.location} has no such config at revision "
            f"{source.revision[:12]} ({listing}); pass one of them with --config."
        ) from exc
    except Exception as exc:
        raise _hub_offline_error(source, exc) from exc
    files = builder.config.data_files or {}
    if source.split not in files:
        raise InputError(
            f"--split {source.split!r}: {source.location} (config {source.config}) has splits "
            f"{sorted(files)}; pass one of them with --split."
        )
    prefix = f"hf://datasets/{source.location}@{source.revision}/"
    paths = [str(url).removeprefix(prefix) for url in files[source.split]]
    try:
        infos = HfApi().get_paths_info(source.location, paths, revision=source.revision, repo_type="dataset")
    except Exception as exc:
        raise _hub_offline_error(source, exc) from exc
    out = []
    for info in infos:
        lfs = getattr(info, "lfs", None)
        out.append((info.path, lfs.sha256 if lfs is not None else info.blob_id))
    return sorted(out)


def _configs_or_none(source: Source) -> list[str]:
    import datasets

    try:
        return list(datasets.get_dataset_config_names(source.location, revision=source.revision))
    except Exception:  # noqa: BLE001 - only for the error message
        return []


def fingerprint(source: Source) -> str:
    """A content fingerprint: equal fingerprints mean equal rows, so the shard plan can be reused."""
    h = hashlib.sha256()
    h.update(json.dumps({"kind": source.kind, "limit": source.limit, "columns": source.columns, "split": source.split}).encode())
    if source.kind == "sample":
        h.update(f"sample-v{sample.GENERATOR_VERSION}-{source.location}".encode())
    elif source.kind == "hub":
        h.update(f"hub:{source.location}:{source.config}".encode())
        for path, oid in hub_data_files(source):
            h.update(f"\n{path}\0{oid}".encode())
    else:
        root = Path(source.location)
        files = _local_files(source) if source.kind != "disk" else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            h.update(str(f.relative_to(root) if f != root else f.name).encode())
            try:
                with f.open("rb") as fh:
                    while block := fh.read(_HASH_BLOCK):
                        h.update(block)
            except OSError as exc:
                raise InputError(f"--source {f}: cannot be read ({exc.strerror}); check its permissions.") from exc
    return h.hexdigest()


# ---- raw readers: each yields lists of raw row dicts (values as found) ------------


def _batched(rows: Iterable[dict]) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) == _READ_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _read_sample(source: Source) -> Iterator[list[dict]]:
    return _batched(sample.generate_articles(int(source.location)))


def _read_parquet(source: Source) -> Iterator[list[dict]]:
    return (table.to_pylist() for table in _parquet_tables(source, _READ_BATCH))


def _parquet_tables(source: Source, batch_size: int) -> Iterator[pa.Table]:
    for f in _local_files(source):
        try:
            pf = streamed(f)
            names = pf.schema_arrow.names
            _check_columns(source, names, f)
            wanted = [c for c in _their_names(source) if c in names]
            # One thread: a batch is small, and sharing its decoding out cost more CPU than it saved.
            for batch in pf.iter_batches(batch_size=batch_size, columns=wanted, use_threads=False):
                yield pa.Table.from_batches([batch])
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"--source {f}: not a readable parquet file ({exc}); re-export it or remove it.") from exc


def _read_jsonl(source: Source, report: RowReport) -> Iterator[list[dict]]:
    return _batched(_jsonl_rows(source, report))


def _jsonl_rows(source: Source, report: RowReport) -> Iterator[dict]:
    seen = 0  # rows yielded so far, to number skipped lines in source order
    for f in _local_files(source):
        try:
            fh = _open_jsonl(f)
        except OSError as exc:
            raise InputError(f"--source {f}: cannot be read ({exc.strerror}); check its permissions.") from exc
        with fh:
            lines = enumerate(fh, 1)
            while True:
                try:
                    line_no, raw = next(lines)
                except StopIteration:
                    break
                except (OSError, EOFError, lzma.LZMAError) as exc:  # a damaged or truncated compressed file
                    raise InputError(f"--source {f}: cannot be read to its end ({exc}); check or re-create it.") from exc
                if line_no == 1:
                    _check_encoding(f, raw[:4])
                    # A UTF-8 byte-order mark (Windows editors write one) is not part of the JSON.
                    raw = raw.removeprefix(codecs.BOM_UTF8)
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    line = raw.decode("utf-8", errors="replace")
                    report.repaired["invalid UTF-8 replaced with U+FFFD"] += 1
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    report.skip(seen, f"{f.name}:{line_no}", "broken JSON line")
                    continue
                if not isinstance(row, dict):
                    report.skip(seen, f"{f.name}:{line_no}", "JSON line is not an object")
                    continue
                seen += 1
                yield row


def _read_disk(source: Source) -> Iterator[list[dict]]:
    return (table.to_pylist() for table in _disk_tables(source, _READ_BATCH))


def _disk_tables(source: Source, batch_size: int) -> Iterator[pa.Table]:
    import datasets

    try:
        ds = datasets.load_from_disk(source.location)
    except Exception as exc:
        raise InputError(f"--source {source.location}: not a datasets save_to_disk folder ({exc}).") from exc
    if isinstance(ds, datasets.DatasetDict):
        if source.split not in ds:
            raise InputError(f"--source {source.location}: no split {source.split!r}; it has {sorted(ds)}. Use --split.")
        ds = ds[source.split]
    _check_columns(source, ds.column_names, source.location)
    yield from ds.with_format("arrow").iter(batch_size=batch_size)


def _read_hub(source: Source) -> Iterator[list[dict]]:
    import datasets

    if source.revision is None:
        raise ValueError(f"{source.location}: pin() the Hub source before reading or fingerprinting it")
    try:
        ds = datasets.load_dataset(source.location, source.config, split=source.split, revision=source.revision, streaming=True)
    except Exception as exc:
        raise _hub_offline_error(source, exc) from exc
    return _batched(ds)


def _their_names(source: Source) -> list[str]:
    mapping = dict(source.columns)
    return [mapping.get(c, c) for c in REQUIRED + OPTIONAL]


def _check_columns(source: Source, names: Iterable[str], where: Any) -> None:
    mapping = dict(source.columns)
    missing = [mapping.get(c, c) for c in REQUIRED if mapping.get(c, c) not in set(names)]
    if missing:
        raise InputError(
            f"--source {where}: missing required column(s) {missing} (has {sorted(names)[:20]}); "
            "map yours with --columns, e.g. --columns text=body,id=page_id."
        )


# ---- cleaning -----------------------------------------------------------------


def _as_text(value: Any) -> tuple[str | None, str | None]:
    """Return (text, repair note) for a field value; (None, None) for a value that can't be text."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8"), None
        except UnicodeDecodeError:
            return bytes(value).decode("utf-8", errors="replace"), "invalid UTF-8 replaced with U+FFFD"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value), "number converted to string"
    return None, None


def clean_rows(batches: Iterable[list[dict]], source: Source, report: RowReport) -> Iterator[dict[str, str]]:
    """Validate rows one by one: skip what can't be embedded (with a reason), repair the rest."""
    cleaner = _Cleaner(source, report)
    for batch in batches:
        cleaner.seen.settle()
        for raw in batch:
            if not cleaner.count():
                return
            out = cleaner.row(raw)
            if out is not None:
                yield out


# A value holding one of these characters is not blank: none of them is whitespace to Python's
# str.strip (printable ASCII but the space, and every letter and digit).
_NOT_BLANK = r"[!-~]|\p{L}|\p{N}"


def _id_digests(column: pa.ChunkedArray) -> np.ndarray:
    """`_Cleaner._new_id`'s digest of each value of a string column (uint64)."""
    out: list[np.ndarray] = []
    blake2b = hashlib.blake2b
    for chunk in column.chunks:
        _, offsets_buffer, data_buffer = chunk.buffers()[:3]
        wide = pa.types.is_large_string(chunk.type)
        offsets = np.frombuffer(offsets_buffer, dtype=np.int64 if wide else np.int32)[chunk.offset : chunk.offset + len(chunk) + 1].tolist()
        data = memoryview(data_buffer) if data_buffer is not None else memoryview(b"")
        raw = b"".join([blake2b(data[offsets[i] : offsets[i + 1]], digest_size=8).digest() for i in range(len(chunk))])
        out.append(np.frombuffer(raw, dtype="<u8"))
    return np.concatenate(out).astype(np.uint64) if out else np.zeros(0, dtype=np.uint64)


def _holding_nul(column: pa.ChunkedArray) -> np.ndarray:
    """Positions of the values of a string column that hold a NUL character (one scan of its bytes)."""
    found, base = [], 0
    for chunk in column.chunks:
        _, offsets_buffer, data_buffer = chunk.buffers()[:3]
        wide = pa.types.is_large_string(chunk.type)
        offsets = np.frombuffer(offsets_buffer, dtype=np.int64 if wide else np.int32)[chunk.offset : chunk.offset + len(chunk) + 1]
        if data_buffer is not None and len(chunk):
            data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]]
            at = np.flatnonzero(data == 0)
            if len(at):
                found.append(base + np.unique(np.searchsorted(offsets, at + offsets[0], side="right") - 1))
        base += len(chunk)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


class _SeenIds:
    """The id digests of the rows taken so far (`_Cleaner._new_id`'s): the latest in a set, the others
    in one sorted uint64 array, 8 bytes an id where a set of Python ints takes about 75, so that
    checking a source for duplicate ids holds a small share of what its snapshot holds on disk. A
    bitmap over the array (16 to 32 bits an id, bit `digest & mask` set) answers most digests that
    are not in it without a search: a row-by-row source pays one set and one bit lookup a row."""

    # Digests kept in the set before `settle` moves them into the array.
    RECENT = 1 << 17

    def __init__(self) -> None:
        self.recent: set[int] = set()
        self.settled = np.zeros(0, dtype=np.uint64)
        self._bits = bytearray(1)
        self._mask = 7

    def __contains__(self, digest: int) -> bool:
        if digest in self.recent:
            return True
        slot = digest & self._mask
        if not self._bits[slot >> 3] >> (slot & 7) & 1:
            return False
        at = int(self.settled.searchsorted(np.uint64(digest)))
        return at < len(self.settled) and int(self.settled[at]) == digest

    def add(self, digest: int) -> None:
        self.recent.add(digest)

    def settled_mask(self, digests: np.ndarray) -> np.ndarray:
        """Per digest (uint64): whether it is in the array (it stays so until the next `settle`)."""
        if not len(self.settled) or not len(digests):
            return np.zeros(len(digests), dtype=bool)
        at = np.minimum(np.searchsorted(self.settled, digests), len(self.settled) - 1)
        return self.settled[at] == digests

    def settle(self) -> None:
        """Move the set's digests into the array once it holds RECENT of them (called between batches)."""
        if len(self.recent) < self.RECENT:
            return
        new = np.sort(np.fromiter(self.recent, dtype=np.uint64, count=len(self.recent)))
        self.settled = np.insert(self.settled, np.searchsorted(self.settled, new), new)
        self.recent = set()
        if 8 * len(self._bits) >= 16 * len(self.settled):
            self._mark(new)
            return
        size = 1 << (32 * len(self.settled) - 1).bit_length()
        self._bits, self._mask = bytearray(size // 8), size - 1
        for at in range(0, len(self.settled), 1 << 20):
            self._mark(self.settled[at : at + (1 << 20)])

    def _mark(self, digests: np.ndarray) -> None:
        slots = digests & np.uint64(self._mask)
        np.bitwise_or.at(np.frombuffer(self._bits, dtype=np.uint8), (slots >> np.uint64(3)).astype(np.intp),
                         (np.uint8(1) << (slots & np.uint64(7)).astype(np.uint8)))


class _Cleaner:
    """`clean_rows`' checks and repairs, with what they carry from row to row (the row count, the ids seen)."""

    def __init__(self, source: Source, report: RowReport) -> None:
        mapping = dict(source.columns)
        self.key = {c: mapping.get(c, c) for c in REQUIRED + OPTIONAL}
        self.source, self.report = source, report
        self.seen = _SeenIds()
        # parquet/disk sources were checked from their schema; row-wise sources by their first row.
        self.check_first = source.kind in ("jsonl", "hub")
        self.index = 0

    def count(self) -> bool:
        """Count the next row; False once past --limit."""
        self.index += 1
        return self.source.limit is None or self.index <= self.source.limit

    def _new_id(self, row_id: str) -> bool:
        digest = int.from_bytes(hashlib.blake2b(row_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
        if digest in self.seen:
            self.report.skip(self.index - 1, row_id, "duplicate id (first occurrence kept)")
            return False
        self.seen.add(digest)
        return True

    def row(self, raw: dict) -> dict[str, str] | None:
        """The clean row of the counted row `raw`, or None where it is skipped (counted in the report)."""
        report, key, index = self.report, self.key, self.index
        if self.check_first:
            _check_columns(self.source, raw.keys(), self.source.spec)
            self.check_first = False
        raw_id = raw.get(key["id"])
        row_id, note = _as_text(raw_id)
        if note == "number converted to string":
            note = "id converted to string"
        if note:
            report.repaired[note] += 1
        if row_id is None or not row_id.strip():
            report.skip(index - 1, raw_id, "missing or non-string id" if key["id"] in raw else "no id column")
            return None
        text, note = _as_text(raw.get(key["text"]))
        if text is None or isinstance(raw.get(key["text"]), (int, float)):
            reason = "null text" if raw.get(key["text"]) is None else "text is not a string"
            report.skip(index - 1, row_id, reason)
            return None
        if note:
            report.repaired[note] += 1
        if "\x00" in text:
            text = text.replace("\x00", "")
            report.repaired["NUL bytes removed"] += 1
        if not text.strip():
            report.skip(index - 1, row_id, "blank text")
            return None
        if not self._new_id(row_id):
            return None
        out = {"id": row_id, "text": text}
        for col in OPTIONAL:
            value, note = _as_text(raw.get(key[col]))
            if value is None:
                report.repaired[f"missing {col} set to empty"] += 1
                value = ""
            elif note:
                report.repaired[note] += 1
            out[col] = value.replace("\x00", "")
        # Lone surrogates (from JSON escapes) can't be written as UTF-8: replace them.
        for col, value in out.items():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                out[col] = _SURROGATE.sub("\ufffd", value)
                report.repaired["invalid UTF-8 replaced with U+FFFD"] += 1
        report.rows += 1
        return out

    def _plain(self, table: pa.Table) -> np.ndarray | None:
        """Per row of an Arrow table of raw rows: True where `row` would take it exactly as it is (string
        id and text that are not blank, string url and title, no NUL in text, url or title, valid
        UTF-8), so it needs no Python object; None where no row can be taken so."""
        columns = {}
        for c in REQUIRED + OPTIONAL:
            if self.key[c] not in table.column_names:
                return None
            column = table.column(self.key[c])
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                return None
            try:
                column.validate(full=True)  # UTF-8 a Python string can hold (else the row-by-row path says what is wrong)
            except pa.ArrowInvalid:
                return None
            columns[c] = column
        plain = pc.and_(pc.match_substring_regex(columns["id"], _NOT_BLANK), pc.match_substring_regex(columns["text"], _NOT_BLANK))
        for c in ("text", *OPTIONAL):
            plain = pc.and_(plain, pc.is_valid(columns[c]))
        plain = pc.fill_null(plain, False).to_numpy(zero_copy_only=False).copy()
        for c in ("text", *OPTIONAL):
            plain[_holding_nul(columns[c])] = False
        return plain

    def table(self, raw: pa.Table) -> pa.Table | None:
        """The clean rows of a table of raw rows, as a table of SNAPSHOT_SCHEMA (the rows `row` gives, in
        order); None once past --limit. Rows that need nothing stay in Arrow; the others go through `row`."""
        if self.source.limit is not None:
            left = self.source.limit - self.index
            if left <= 0:
                self.index += 1
                return None
            raw = raw.slice(0, left)
        plain = self._plain(raw)
        seen = self.seen
        seen.settle()
        if plain is not None:  # the id digests `_new_id` makes, from the id column's bytes (valid UTF-8: the same bytes)
            found = _id_digests(raw.column(self.key["id"]))
            digests, settled = found.tolist(), seen.settled_mask(found).tolist()
        taken: list[int] = []  # rows taken as they are
        cleaned: list[tuple[int, dict[str, str]]] = []  # rows cleaned one by one
        first, recent = self.index, seen.recent
        for i in range(raw.num_rows):
            if plain is not None and plain[i]:
                if not settled[i] and digests[i] not in recent:
                    recent.add(digests[i])
                    taken.append(i)
                else:
                    self.report.skip(first + i, raw.column(self.key["id"])[i].as_py(), "duplicate id (first occurrence kept)")
                continue
            self.index = first + i + 1
            out = self.row(raw.slice(i, 1).to_pylist()[0])
            if out is not None:
                cleaned.append((i, out))
        self.index = first + raw.num_rows
        self.report.rows += len(taken)
        if not taken:
            return pa.Table.from_pylist([r for _, r in cleaned], SNAPSHOT_SCHEMA)
        as_is = raw.select([self.key[c] for c in SNAPSHOT_SCHEMA.names]).rename_columns(SNAPSHOT_SCHEMA.names)
        as_is = as_is.cast(SNAPSHOT_SCHEMA) if as_is.schema != SNAPSHOT_SCHEMA else as_is
        if not cleaned:
            return as_is if len(taken) == raw.num_rows else as_is.take(pa.array(taken, pa.int64()))
        parts = pa.concat_tables([as_is.take(pa.array(taken, pa.int64())), pa.Table.from_pylist([r for _, r in cleaned], SNAPSHOT_SCHEMA)])
        order = np.argsort(np.array(taken + [i for i, _ in cleaned], dtype=np.int64), kind="stable")
        return parts.take(pa.array(order))


def read_source(source: Source, report: RowReport) -> Iterator[dict[str, str]]:
    """All clean rows of a source, streaming, in source order."""
    if source.kind == "sample":
        raw = _read_sample(source)
    elif source.kind == "parquet":
        raw = _read_parquet(source)
    elif source.kind == "jsonl":
        raw = _read_jsonl(source, report)
    elif source.kind == "disk":
        raw = _read_disk(source)
    else:
        raw = _read_hub(source)
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
    if source.kind == "parquet":
        raw = _parquet_tables(source, _ARROW_BATCH)
    elif source.kind == "disk":
        raw = _disk_tables(source, _ARROW_BATCH)
    else:
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
    for table in raw:
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


def streamed(path: Path) -> pq.ParquetFile:
    """A parquet file to read from start to end in batches (`iter_batches`), holding about one row
    group at a time. Pyarrow's default pre-buffering keeps the column chunks of every row group it has
    read until the file object is gone: a whole file's compressed bytes by its last batch."""
    return pq.ParquetFile(path, pre_buffer=False)


def read_snapshot_rows(path: Path, start: int, end: int) -> pa.Table:
    """Rows `[start, end)` of a snapshot, reading only the row groups that hold them."""
    pf = pq.ParquetFile(path)
    first, last = start // SNAPSHOT_ROW_GROUP, (end - 1) // SNAPSHOT_ROW_GROUP
    groups = list(range(first, min(last, pf.num_row_groups - 1) + 1))
    table = pf.read_row_groups(groups)
    offset = start - first * SNAPSHOT_ROW_GROUP
    return table.slice(offset, end - start)
