"""A run store's files at the lowest level: hashing a file (and many, on threads: `each_in_threads`), writing
JSON atomically, an OS error in words, the lock, and how a store's writes reach other machines (`StoreSync`).

`wikiembed.store.Store` (and `wikiembed.publish`, `wikiembed.finetune`) build on these; they are
importable from `wikiembed.store` too.

Touches: the files it is given (read for a hash; a JSON file written through `wikiembed.atomic`; a lock file).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Any, Protocol

from wikiembed import atomic
from wikiembed.errors import StoreError

_HASH_BLOCK = 1 << 22


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write a store's JSON file atomically; an OS error becomes a StoreError that says what to do."""
    try:
        atomic.write_json(path, payload)
    except OSError as exc:
        raise store_os_error(exc, path) from exc


def store_os_error(exc: OSError, path: Path) -> StoreError:
    """Turn an OS error on a store path into a StoreError that says where and what to do."""
    if exc.errno == errno.ENOSPC:
        fix = "free space on that disk or point --store at a bigger one"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the folder writable or point --store somewhere writable"
    else:
        fix = "check the store's disk and permissions"
    return StoreError(f"store path {path}: {exc.strerror or exc}; {fix}. Shards already done stay valid.")


class StoreLock:
    """An exclusive `flock` on `STORE/.lock` (or on another lock file: a fine-tune's beside its `--out`).

    The kernel drops a flock when its process dies, so a run killed with
    SIGKILL never leaves the store locked; the file's contents only say who
    holds it, for the error message, which `what` and `fix` word for something else than a store.
    With `remove`, the holder deletes the file before it lets go (a lock beside a folder should not
    outlive its use); a taker then checks that the file it locked is still the one at the path, and
    otherwise takes the one there now.
    """

    def __init__(self, path: Path, wait_s: float = 0.0, *, what: str | None = None,
                 fix: str = "wait for that run to finish, or use another --store", remove: bool = False) -> None:
        self.path = path
        self.wait_s = wait_s
        self.what = what or f"store {path.parent}"
        self.fix = fix
        self.remove = remove
        self._fd: int | None = None

    def __enter__(self) -> "StoreLock":
        while True:
            fd = self._take()
            if not self.remove or self._still_there(fd):
                break
            fcntl.flock(fd, fcntl.LOCK_UN)  # its holder removed it as it finished: a new file is the lock now
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd = fd
        return self

    def _take(self) -> int:
        """The lock file, open and flocked (after up to `wait_s`), or the error naming its holder."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise store_os_error(exc, self.path) from exc
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    os.close(fd)
                    raise StoreError(f"{self.what} is in use by {holder}; {self.fix}. A killed run releases it at once.") from None
                time.sleep(0.2)

    def _still_there(self, fd: int) -> bool:
        try:
            there = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            if self.remove:
                self.path.unlink(missing_ok=True)  # while held: whoever opened it meanwhile finds it gone and retries
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def each_in_threads(fn: Any, items: list[Any]) -> list[Any]:
    """`[fn(x) for x in items]` on up to one thread a core: hashing releases the GIL, so a store's files
    are hashed as fast as the disk gives them, not at one core's sha256 rate."""
    workers = min(len(items), os.cpu_count() or 1, 8)
    if workers <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wikiembed-verify") as pool:
        return list(pool.map(fn, items))


class StoreSync(Protocol):
    """How a store's writes reach other machines and theirs reach this one.

    A local disk needs nothing (`LOCAL`). A Modal Volume (`wikiembed.volume_store.VolumeSync`)
    shows other containers' commits only after `reload()` and this container's writes to
    others only after `commit()`.
    """

    #: Whether a data file's mtime and inode stay the same for every reader. On a Volume each
    #: container has its own copy, so the marker's fast stat check falls back to the size.
    stable_stat: bool

    def reload(self) -> None: ...

    def commit(self) -> None: ...


class LocalSync:
    """A store on a local or shared POSIX disk: writes are visible at once, nothing to do."""

    stable_stat = True

    def reload(self) -> None:
        pass

    def commit(self) -> None:
        pass


LOCAL = LocalSync()
