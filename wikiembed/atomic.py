"""Replacing a file atomically: the one way wikiembed writes a file that someone may read.

Write to a hidden temp name beside the destination, fsync, rename over it. A reader, or a
run resumed after a kill, sees the old file or the new one, never half of one. Temp names
are `.NAME.tmp-PID`, which `Store.clean_temp_files` recognizes after a kill.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

# Temp files this process is writing now. A stop that ends the process without unwinding its
# threads (the CLI's Ctrl-C and SIGTERM handler, `os._exit`) removes them first: a snapshot being
# written can be many megabytes, and would otherwise stay until a later run of that generation.
_WRITING: set[Path] = set()


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temp path to write `dest`'s new content to; on a clean exit it is fsynced and renamed
    over `dest`, on any error (or a signal) it is removed. OSErrors pass through to the caller,
    which knows what the path is and how to word the fix."""
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
