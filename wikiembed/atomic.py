"""Replacing a file atomically: the one way wikiembed writes a file that someone may read.

Write to a hidden temp name beside the destination, fsync, rename over it. A reader, or a
run resumed after a kill, sees the old file or the new one, never half of one. Temp names
are `.NAME.tmp-PID`, which `Store.clean_temp_files` recognizes after a kill.

Nothing is written or removed through a symbolic link: wikiembed's own links (a store's
`current`, `next` and the names at its top) are never on the paths it writes (it writes
`gens/<gen>/...` and resolves the store's folder itself), so a link on such a path was put
there by someone else and may lead anywhere, e.g. to a file outside the store that a write
would overwrite. `refuse_links` says which, before anything changes.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from wikiembed.errors import InputError

# Temp files this process is writing now. A stop that ends the process without unwinding its
# threads (the CLI's Ctrl-C and SIGTERM handler, `os._exit`) removes them first: a snapshot being
# written can be many megabytes, and would otherwise stay until a later run of that generation.
_WRITING: set[Path] = set()


def first_link(path: Path) -> Path | None:
    """The first symbolic link on `path` (the path itself or a folder above it), or None."""
    path = Path(os.path.abspath(path))
    for part in (*reversed(path.parents[:-1]), path):  # from the top down, "/" left out
        if part.is_symlink():
            return part
    return None


def refuse_links(path: Path, *, inside: bool = False) -> None:
    """Refuse (InputError, naming the link and the fix) a `path` reached through a symbolic link:
    the path itself or a folder above it; with `inside`, also any link below the folder `path`
    (what a cleanup of that folder would otherwise delete or write through)."""
    link = first_link(path)
    if link is None and inside and path.is_dir():
        link = next((Path(top) / name for top, dirs, files in os.walk(path) for name in (*dirs, *files)
                     if (Path(top) / name).is_symlink()), None)
    if link is not None:
        try:
            target = f" (to {os.readlink(link)})"
        except OSError:
            target = ""
        raise InputError(
            f"{link} is a symbolic link{target} that wikiembed did not make: writing or deleting {path} through it "
            "could change files wikiembed does not own; replace the link with a real folder or file (or remove it), "
            "then run the same command again. Nothing was written or deleted through it."
        )


def remove(path: Path) -> None:
    """Delete the file `path` (a link itself, never what it points to), refused when a folder above
    it is a symbolic link."""
    refuse_links(path.parent)
    path.unlink(missing_ok=True)


def remove_empty_dir(path: Path) -> None:
    """Delete the empty folder `path`, refused when it or a folder above it is a symbolic link."""
    refuse_links(path)
    path.rmdir()


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temp path to write `dest`'s new content to; on a clean exit it is fsynced and renamed
    over `dest`, on any error (or a signal) it is removed. Refused (InputError) when `dest` or a
    folder above it is a symbolic link (`refuse_links`). OSErrors pass through to the caller,
    which knows what the path is and how to word the fix."""
    refuse_links(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    _WRITING.add(tmp)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _WRITING.discard(tmp)


def remove_unfinished() -> None:
    """Remove every temp file this process is still writing, for a stop that exits at once: the
    threads writing them are not unwound, and what they wrote is redone on resume anyway."""
    for tmp in list(_WRITING):  # a copy: writer threads may add or discard entries meanwhile
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a stop must not fail; a later run of the generation removes what is left


def write_bytes(dest: Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text(dest: Path, text: str) -> None:
    write_bytes(dest, text.encode("utf-8"))


def write_json(dest: Path, payload: Any) -> None:
    write_text(dest, json.dumps(payload, indent=1, sort_keys=True))
