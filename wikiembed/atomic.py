"""Replacing a file atomically: the one way wikiembed writes a file that someone may read.

Write to a hidden temp name beside the destination, fsync, rename over it. A reader, or a
run resumed after a kill, sees the old file or the new one, never half of one. Every temp name
is `.NAME.tmp-PID` (`temp_path`): a file streamed (`atomic_path`), a whole file (`write_bytes`,
`write_text`, `write_json`), a folder (`begin_dir`, `finish_dir`) or a link (`replace_link`). `remove_temps`
removes those a killed process left (`Store.clean_temp_files` at every generation folder), and
no module but this one renames a file into place.

Nothing is written or removed through a symbolic link: wikiembed's own links (a store's
`current`, `next` and the names at its top) are never on the paths it writes (it writes
`gens/<gen>/...` and resolves the store's folder itself), so a link on such a path was put
there by someone else and may lead anywhere, e.g. to a file outside the store that a write
would overwrite. `refuse_links` says which, before anything changes.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from wikiembed.errors import InputError

# Temp files this process is writing now. A stop that ends the process without unwinding its
# threads (the CLI's Ctrl-C and SIGTERM handler, `os._exit`) removes them first: a snapshot being
# written can be many megabytes, and would otherwise stay until a later run of that generation.
_WRITING: set[Path] = set()


TEMP_MARK = ".tmp-"


def temp_path(dest: Path) -> Path:
    """The temp name this process writes `dest`'s new content to: `.NAME.tmp-PID` beside it."""
    return dest.with_name(f".{dest.name}{TEMP_MARK}{os.getpid()}")


def temp_pid(name: str) -> int | None:
    """The pid in a temp name `.NAME.tmp-PID` (None for any other name)."""
    if not name.startswith(".") or TEMP_MARK not in name:
        return None
    pid = name.rsplit(TEMP_MARK, 1)[1]
    return int(pid) if pid.isdigit() else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
def atomic_path(dest: Path, *, follow_links: bool = False) -> Iterator[Path]:
    """Yield a temp path to write `dest`'s new content to (a writer may stream into it: a parquet
    writer, `np.savez`); on a clean exit it is fsynced and renamed over `dest`, on any error (or a
    signal) it is removed. Refused (InputError) when `dest` or a folder above it is a symbolic link
    (`refuse_links`), unless `follow_links` (a file outside any store, in a folder the user may
    reach through a link: the hash cache). OSErrors pass through to the caller, which knows what
    the path is and how to word the fix."""
    if not follow_links:
        refuse_links(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
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


def begin_dir(dest: Path) -> Path:
    """A new, empty temp folder to build the folder `dest` in; `finish_dir` puts it in place. Temp
    folders of `dest` left by a killed process (or one that failed: what it wrote is not reused) are
    removed first: the caller holds the lock on `dest`, so no other process is building one. Links
    are followed: `dest` is a folder the user names, outside any store."""
    remove_temps(dest.parent, name=dest.name, only_dead=False, follow_links=True)
    tmp = temp_path(dest)
    tmp.mkdir(parents=True)
    return tmp


def finish_dir(tmp: Path, dest: Path) -> None:
    """Rename the folder `tmp` (from `begin_dir`) to `dest`, which must not exist or be an empty folder."""
    os.replace(tmp, dest)


def replace_link(link: Path, target: str, *, follow_links: bool = False) -> None:
    """Point the symbolic link `link` at `target` in one rename (a reader sees the old target or the
    new one). Refused when a folder above `link` is a symbolic link (`link` itself is one), unless
    `follow_links` (a link the user names, outside any store: the served link)."""
    if not follow_links:
        refuse_links(link.parent)
    tmp = temp_path(link)
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_temps(folder: Path, *, name: str | None = None, recursive: bool = False, only_dead: bool = True,
                 follow_links: bool = False) -> int:
    """Remove the temp files (`.NAME.tmp-PID`) a killed process left in `folder` (with `recursive`, in
    every folder below it too, never through a link); returns how many. `name`: only the temps of
    that one destination. `only_dead`: leave those of another process that is still running (one
    writing them now); this process's own are left while it is writing them. A temp folder (`begin_dir`) goes as a whole; a link is removed, never
    what it points to. Refused when `folder` is reached through a link, unless `follow_links`."""
    if not folder.is_dir():
        return 0
    if not follow_links:
        refuse_links(folder)
    removed = 0
    for top, dirs, files in os.walk(folder):  # os.walk descends into no linked folder
        for entry in (*files, *dirs):
            pid = temp_pid(entry)
            if pid is None or (name is not None and not entry.startswith(f".{name}{TEMP_MARK}")):
                continue
            if only_dead and pid != os.getpid() and pid_alive(pid):
                continue
            path = Path(top) / entry
            if path in _WRITING:  # this process is writing it now
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
        dirs[:] = [d for d in dirs if recursive and temp_pid(d) is None]
    return removed


def remove_unfinished() -> None:
    """Remove every temp file this process is still writing, for a stop that exits at once: the
    threads writing them are not unwound, and what they wrote is redone on resume anyway."""
    for tmp in list(_WRITING):  # a copy: writer threads may add or discard entries meanwhile
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a stop must not fail; a later run of the generation removes what is left


def write_bytes(dest: Path, data: bytes, *, follow_links: bool = False) -> None:
    with atomic_path(dest, follow_links=follow_links) as tmp:
        tmp.write_bytes(data)


def write_text(dest: Path, text: str, *, follow_links: bool = False) -> None:
    write_bytes(dest, text.encode("utf-8"), follow_links=follow_links)


def write_json(dest: Path, payload: Any) -> None:
    write_text(dest, json.dumps(payload, indent=1, sort_keys=True))
