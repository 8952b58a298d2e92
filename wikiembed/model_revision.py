"""A model's revision: the name of its exact files, weights included.

A fine-tuned model saved over the same folder is a new revision, so its store re-embeds. A Hub
snapshot is named by its commit; any other folder by a content hash of its files, with each file's
sha256 cached by its stat (`file_hashes.json` in the wikiembed cache folder, `cache_dir()`) so a
rerun hashes nothing that did not change. `wikiembed.model.model_info` records it as
`ModelInfo.revision`.

Touches: the model folder (read) and the wikiembed cache folder (the hash cache).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from pathlib import Path

from wikiembed import atomic

# A folder `.../snapshots/<commit>/` of the Hugging Face cache: the commit names every file in it.
_HUB_SNAPSHOT = re.compile(r"[0-9a-f]{40}")
_HASH_BLOCK = 1 << 22


def model_revision(path: Path) -> str:
    """The Hub commit of a snapshot folder, else a content hash of every file in the folder."""
    path = Path(path)
    if path.parent.name == "snapshots" and _HUB_SNAPSHOT.fullmatch(path.name):
        return path.name
    files = sorted(
        f for f in path.rglob("*")
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)
    )
    digest = hashlib.sha256()
    with _HashCache() as cache:
        for f in files:
            digest.update(f"{f.relative_to(path).as_posix()}\0{cache.sha256(f)}\n".encode())
    return "sha256:" + digest.hexdigest()[:16]


def cache_dir() -> Path:
    """wikiembed's cache folder: `WIKIEMBED_CACHE`, else `$XDG_CACHE_HOME/wikiembed`, else `~/.cache/wikiembed`."""
    if os.environ.get("WIKIEMBED_CACHE"):
        return Path(os.environ["WIKIEMBED_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wikiembed"


class _HashCache:
    """sha256 of files, remembered by (size, mtime, ctime, inode) as git's index does.

    The cache is a JSON file under `cache_dir()`, read and rewritten under a
    flock so concurrent runs don't lose each other's entries. A cache that
    cannot be read or written only costs rehashing.
    """

    def __init__(self) -> None:
        self.path = cache_dir() / "file_hashes.json"
        self.entries: dict[str, dict] = {}
        self.changed = False
        self._fd: int | None = None

    def __enter__(self) -> "_HashCache":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            self.entries = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.entries = {}
        return self

    def sha256(self, f: Path) -> str:
        st = f.stat()
        key = str(f.resolve())
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        entry = self.entries.get(key)
        if entry and entry.get("stat") == stamp:
            return str(entry["sha256"])
        h = hashlib.sha256()
        with f.open("rb") as fh:
            while block := fh.read(_HASH_BLOCK):
                h.update(block)
        self.entries[key] = {"stat": stamp, "sha256": h.hexdigest()}
        self.changed = True
        return h.hexdigest()

    def __exit__(self, *exc: object) -> None:
        try:
            if self.changed:
                atomic.write_text(self.path, json.dumps(self.entries), follow_links=True)
        except OSError:
            pass
        finally:
            if self._fd is not None:
                os.close(self._fd)
