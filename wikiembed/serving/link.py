"""The served link: a symbolic link to a run store that `wikiembed serve --store LINK` follows.

`improve --serve-link LINK` points it at the new store when the new store is better (one atomic rename,
as the store's own `current` link is swapped), so a running service answers from the new store and its
model from the next batch on, without a restart; the next round's `improve --store LINK` improves what
is served. The link's target is written relative to the link's folder, so the folder of stores can be
moved as a whole.

Touches: the link (created or replaced; never a folder or file that is not a link).
"""

from __future__ import annotations

import os
from pathlib import Path

from wikiembed import atomic
from wikiembed.errors import InputError


def check_link(link: str | Path, volume: str | None = None) -> Path:
    """The link's path, refused before the loop runs when it could not be pointed at a store later."""
    if volume is not None:
        raise InputError(f"serve_link {link}: the service serves a local store; a store on the Modal Volume {volume!r} "
                         "is served from a local copy, so leave serve_link out.")
    path = Path(link).expanduser().absolute()
    if path.exists() and not path.is_symlink():
        raise InputError(f"serve_link {path} is a {'folder' if path.is_dir() else 'file'}, not a link; give the path of a "
                         "symbolic link to a store (e.g. runs/served, made with `ln -s wiki-2026-w48 runs/served`) or a new one.")
    if not path.parent.is_dir():
        raise InputError(f"serve_link {path}: its folder {path.parent} does not exist.")
    return path


def point_link(link: str | Path, store: str | Path) -> dict[str, str]:
    """Atomically point `link` at `store`; returns {"link", "store"} as written."""
    path = check_link(link)
    target = Path(store).expanduser().resolve()
    relative = os.path.relpath(target, path.parent.resolve())
    atomic.replace_link(path, relative, follow_links=True)
    return {"link": str(path), "store": str(target)}
