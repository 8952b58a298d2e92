"""A local UTF-8 JSON Lines file, or a folder of them: `.jsonl`, `.json`, `.ndjson`, each plain or
compressed with gzip, bz2 or xz (opened by suffix). One JSON object a line; broken lines are skipped
and counted."""

from __future__ import annotations

import bz2
import codecs
import gzip
import json
import lzma
from pathlib import Path
from typing import Any, Iterator

from wikiembed.errors import InputError
from wikiembed.sources.base import RowReport, Source, SourceReader, batched, data_files, names, register

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_JSONL_PATTERNS = tuple(f"*{s}{c}" for s in JSONL_SUFFIXES if s != ".json" for c in ("", *_COMPRESSED))
# Byte-order marks of encodings JSON Lines must not be in (checked longest first: UTF-32 LE
# starts with UTF-16 LE's mark).
_FOREIGN_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"),
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


class JsonLinesReader(SourceReader):
    kind = "jsonl"
    file_hint = f".jsonl (plain or compressed: {', '.join('.jsonl' + c for c in _COMPRESSED)})"
    folder_label = "JSON Lines files"

    def takes_file(self, path: Path) -> bool:
        return _is_jsonl(path)

    def folder_files(self, folder: Path) -> list[Path]:
        unreadable = [f for f in data_files(folder, ("*.jsonl.*", "*.ndjson.*")) if not _is_jsonl(f)]
        if unreadable:
            # Skipping them would drop their rows silently.
            raise InputError(
                f"--source {folder}: the folder holds JSON Lines files in a compression wikiembed cannot read "
                f"({names(unreadable)}); decompress them or recompress them as {', '.join('.jsonl' + c for c in _COMPRESSED)}."
            )
        return data_files(folder, _JSONL_PATTERNS)

    def takes_folder(self, folder: Path, files: list[Path]) -> bool:
        # Plain `.json` files make a JSON Lines folder only where no other format's files are there.
        return bool(files or data_files(folder, ("*.json",)))

    def files(self, source: Source) -> list[Path]:
        path = Path(source.location)
        if path.is_file():
            return [path]
        files = data_files(path, (*_JSONL_PATTERNS, "*.json"))
        if not files:
            raise InputError(f"--source {path}: no {source.kind} files found in the folder.")
        return files

    def batches(self, source: Source, report: RowReport) -> Iterator[list[dict]]:
        return batched(self._rows(source, report))

    def _rows(self, source: Source, report: RowReport) -> Iterator[dict]:
        seen = 0  # rows yielded so far, to number skipped lines in source order
        for f in self.files(source):
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


register(JsonLinesReader())
