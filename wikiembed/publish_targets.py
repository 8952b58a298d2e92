"""Where a store is published to: a `dir:PATH` folder or a `hub:ORG/NAME` dataset repo.

Parsing and checking a target before any work (`check_target`: the folder, the token), the
words an OS error of an export is explained in, and the copy of the staged tree into a folder.
The staging and the upload: `wikiembed.publish`.

Touches: a `dir:` target folder (its README.md, data/ and export marker, through `wikiembed.atomic`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from wikiembed import atomic
from wikiembed.card import SPLIT
from wikiembed.errors import InputError, StoreError, UploadError
from wikiembed.hub_upload import SECRET_BLOCK, token_and_source
from wikiembed.store import sha256_file

STAGING_DIR = "_publish"
# Left in a `dir:` export: the folder is ours to update (datasets ignores dot files).
EXPORT_MARKER = ".wikiembed-export.json"
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_PUBLISHED_NAME = re.compile(rf"^{SPLIT}-\d{{5}}-of-\d{{5}}\.parquet$")


def _parse_target(target: str, store: Path) -> tuple[Literal["dir", "hub"], str]:
    kind, _, rest = str(target).partition(":")
    if kind == "dir" and rest:
        path = Path(rest).expanduser().resolve()
        root = store.resolve()
        if path == root or root in path.parents:
            raise InputError(
                f"target {target!r} is inside the store {store}; give a folder outside it, e.g. --to dir:./published."
            )
        return "dir", str(path)
    if kind == "hub" and rest:
        parts = rest.split("/")
        if len(parts) == 2 and all(_REPO_PART.match(p) and "--" not in p and ".." not in p for p in parts):
            return "hub", rest
        raise InputError(
            f"target {target!r}: {rest!r} is not a Hub repo id; write hub:ORG/NAME "
            "(letters, digits, '-', '_', '.'), e.g. --to hub:my-org/wikipedia-minilm."
        )
    raise InputError(
        f"target {target!r}: give hub:ORG/NAME to publish to a Hugging Face dataset repo, "
        "or dir:PATH to write the same folder locally."
    )


def _refuse_foreign_dir(dest: Path, replace: bool) -> None:
    """A `dir:` target is ours when it is new, empty, or holds our export marker: never overwrite
    someone's dataset folder by accident."""
    if dest.exists() and not dest.is_dir():
        raise InputError(f"--to {dest} is a file; give a folder to export into.")
    if replace or not dest.exists() or (dest / EXPORT_MARKER).exists():
        return
    theirs = sorted(p.name for p in dest.iterdir())
    if theirs:
        shown = ", ".join(theirs[:5]) + (f" and {len(theirs) - 5} more" if len(theirs) > 5 else "")
        raise InputError(
            f"--to {dest} holds files wikiembed did not write ({shown}); export into a new or empty folder, "
            "or pass --replace to replace its README.md and data/ files with this export."
        )


def _refuse_hub_options(target: str, *, private: bool, revision: str | None, create_pr: bool) -> None:
    """--private, --revision and --create-pr are about a Hub repo: a `dir:` folder has no visibility,
    branches or pull requests, so they are refused there rather than silently ignored."""
    given = [flag for flag, on in (("--private", private), ("--revision", revision), ("--create-pr", create_pr)) if on]
    if given:
        raise InputError(
            f"{', '.join(given)} with {target!r}: {'they apply' if len(given) > 1 else 'it applies'} only to a Hub "
            "dataset repo (hub:ORG/NAME), and a folder has no visibility, branches or pull requests; drop "
            f"{'them' if len(given) > 1 else 'it'}, or publish to hub:ORG/NAME."
        )


def _hub_token(target: str) -> tuple[str, str]:
    """(token, where it came from) for publishing to `target`; refused when there is none."""
    token, source = token_and_source()
    if not token:
        raise UploadError(
            f"no Hugging Face token for {target}: set HF_TOKEN, or store one in Prefect with "
            f"`Secret(value=...).save({SECRET_BLOCK!r})` (a Secret block named {SECRET_BLOCK!r})."
        )
    return token, source


def _refuse_unwritable_dir(dest: Path) -> None:
    """A `dir:` folder that exists must be writable; one that does not must be creatable."""
    existing = next(p for p in (dest, *dest.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"--to {dest}: {existing} is a file, so the folder cannot be made there; give a folder path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == dest else f"cannot be created: {existing} is not writable"
        raise InputError(f"--to {dest} {what}; make that folder writable or publish to a writable one.")


def check_target(target: str | None, store: str | Path) -> None:
    """Before any work: refuse a publishing target that `publish` would refuse at the end of a run: a
    target that is not hub:ORG/NAME or dir:PATH, a `dir:` folder inside the store, that cannot be
    written or created, or that holds files wikiembed did not write, a `hub:` repo with no token.
    Whether the Hub accepts the token is checked when publishing, before any data moves."""
    if not target:
        return
    kind, where = _parse_target(target, Path(store))
    if kind == "hub":
        _hub_token(target)
        return
    dest = Path(where)
    _refuse_foreign_dir(dest, replace=False)
    _refuse_unwritable_dir(dest)


@contextlib.contextmanager
def _explained_os_errors(store: Path, dest: Path | None) -> Iterator[None]:
    """An OS error while exporting names the path and the fix (read-only folder, full disk)."""
    try:
        yield
    except OSError as exc:
        # A copy's error names its source first and its destination second (`filename2`).
        paths = [Path(p) for p in (getattr(exc, "filename2", None), getattr(exc, "filename", None)) if p]
        inside = [p for p in paths if dest is not None and (p == dest or dest in p.parents)]
        where = inside[0] if inside else (paths[-1] if paths else (dest or store))
        text = str(exc.strerror or exc)
        if exc.errno == errno.ENOSPC or "No space left" in text:
            fix = "free space on that disk" + (" or export to a folder on another one" if inside else
                                               f" (export stages its files in {store / STAGING_DIR})")
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) or "ermission denied" in text or "Read-only" in text:
            fix = ("make that folder writable or export to a writable one" if inside else
                   f"export stages its files in {store / STAGING_DIR}: make the store writable")
        else:
            fix = "check that disk and its permissions"
        error = InputError if inside else StoreError
        raise error(f"export to {dest or 'the Hub'} failed at {where}: {text}; {fix}, then run the same command "
                    "again. The store's shards are unchanged.") from None


def _copy_to_dir(staging: Path, files: dict[str, dict[str, Any]], dest: Path) -> bool:
    """Mirror the published tree into `dest`; return whether anything changed there."""
    # Marked first, so an interrupted first export is still recognised as ours.
    atomic.write_json(dest / EXPORT_MARKER, {"written_by": "wikiembed"})
    changed = False
    for rel, info in sorted(files.items()) + [("README.md", {"size": (staging / "README.md").stat().st_size})]:
        target = dest / rel
        source = staging / rel
        same = target.exists() and target.stat().st_size == info["size"] and (
            sha256_file(target) == (info.get("sha256") or sha256_file(source))
        )
        if same:
            continue
        with atomic.atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        changed = True
    # Files of an older layout would be picked up by the card's glob: remove them (ours only).
    data = dest / "data"
    for path in sorted(data.rglob("*"), reverse=True) if data.exists() else []:
        rel = path.relative_to(dest).as_posix()
        if path.is_file() and _PUBLISHED_NAME.match(path.name) and rel not in files:
            atomic.remove(path)
            changed = True
        elif path.is_dir() and not any(path.iterdir()):
            atomic.remove_empty_dir(path)
    return changed
