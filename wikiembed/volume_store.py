"""A run store on a Modal Volume: `--store modal:VOLUME/PATH`.

Two views of the same store, one interface:

- Inside a container the Volume is mounted at `STORE_MOUNT`, and the store is the
  ordinary filesystem `Store` at `STORE_MOUNT/PATH` with a `VolumeSync`: `reload()`
  before reading, `commit()` after writing (a shard's data before its marker).
- Outside Modal (the flow's machine, `wikiembed status` / `rerun`) `VolumeStore`
  answers the same calls the flow makes on a local `Store` (`read_manifest`,
  `states`, `mark_failed`, `forget`, `lock`) by calling the deployed `StoreOps`
  class (`modal_workers/store_app.py`), which runs `wikiembed.fanout` at the mount.
  Only control data travels: the manifest's plan, shard states, error texts.

`open_store(spec)` picks the view from the spec, so the flow and the CLI take either.

Touches: Modal's API (through the `modal` client and the user's Modal token) for a
Volume store; nothing else.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from wikiembed.errors import InputError
from wikiembed.store import ShardState, Store

PREFIX = "modal:"
# Where the deployed apps mount the store Volume; a store `modal:VOLUME/PATH` is at STORE_MOUNT/PATH there.
STORE_MOUNT = "/store"
DEFAULT_VOLUME = "wikiembed-store"


class VolumeSync:
    """`StoreSync` over a mounted `modal.Volume`: `reload()` to see others' commits, `commit()` to publish ours."""

    stable_stat = False  # each container holds its own copy of a file: another inode, maybe another mtime

    def __init__(self, volume: Any) -> None:
        self.volume = volume

    def reload(self) -> None:
        self.volume.reload()

    def commit(self) -> None:
        self.volume.commit()


def parse_spec(spec: str) -> tuple[str, str] | None:
    """`modal:VOLUME/PATH` -> (VOLUME, PATH); None for a local store path."""
    if not spec.startswith(PREFIX):
        return None
    volume, _, path = spec[len(PREFIX) :].strip("/").partition("/")
    if not volume or not path or ".." in path.split("/"):
        raise InputError(
            f"--store {spec!r}: a store on a Modal Volume is modal:VOLUME/PATH, e.g. modal:{DEFAULT_VOLUME}/enwiki."
        )
    return volume, path


def mount_path(spec: str) -> str:
    """Where a `modal:VOLUME/PATH` store is inside a container that mounts VOLUME."""
    parsed = parse_spec(spec)
    if parsed is None:
        raise InputError(f"--store {spec!r}: not a Modal Volume store (modal:VOLUME/PATH).")
    return f"{STORE_MOUNT}/{parsed[1]}"


def check_store_for_backend(backend: str, store: str) -> None:
    """`--backend modal` runs whole shards where the GPUs are, so its store must be on a Modal Volume,
    and only Modal containers can reach a Volume store."""
    on_volume = parse_spec(store) is not None
    if backend == "modal" and not on_volume:
        raise InputError(
            f"--backend modal with --store {store!r}: Modal containers cannot see a local folder; "
            f"put the store on a Modal Volume, e.g. --store {PREFIX}{DEFAULT_VOLUME}/{store.strip('/').split('/')[-1] or 'run'}."
        )
    if on_volume and backend != "modal":
        raise InputError(f"--store {store!r} is on a Modal Volume: use --backend modal, or a local --store folder.")


def open_store(spec: str, gen: str | None = None) -> "Store | VolumeStore":
    """The store behind `--store`: a local folder, or `modal:VOLUME/PATH` on a Modal Volume."""
    return VolumeStore(spec, gen) if parse_spec(spec) else Store(spec, gen)


class VolumeStore:
    """A Volume store seen from outside Modal: each call runs the filesystem code in a `StoreOps` container."""

    def __init__(self, spec: str, gen: str | None = None, ops: Any = None) -> None:
        from wikiembed.backends.modal_client import store_ops  # lazy: `status` on a local store needs no Modal

        self.volume, self.path = parse_spec(spec) or ("", "")
        self.root = spec  # what the flow shows and passes on: the spec, never a local path
        self._ops = ops or store_ops(self.volume)
        self._manifest: dict[str, Any] | None = None
        self.gen = gen  # None: the generation status and rerun work on, learnt from the first view

    def _view(self, with_states: bool = True) -> dict[str, Any]:
        view = self._ops.call("view", mount_path(self.root), self.gen, with_states)
        self.gen = view["gen"]
        self._manifest = view["manifest"]  # fixed for a generation: read once
        return view

    def exists(self) -> bool:
        try:
            self.read_manifest()
        except Exception:  # noqa: BLE001 - any answer but a manifest means "no run here"
            return False
        return True

    def read_manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            self._view(with_states=False)
        assert self._manifest is not None
        return self._manifest

    def states(self, manifest: dict[str, Any] | None = None) -> list[ShardState]:
        return [ShardState(**s) for s in self._view()["states"]]

    def mark_failed(self, shard: int, error: str, attempts: int) -> None:
        self._ops.call("mark_failed", mount_path(self.root), self.gen, shard, error, attempts)

    def forget(self, shard: int) -> None:
        self._ops.call("forget", mount_path(self.root), self.gen, [shard])

    @contextlib.contextmanager
    def lock(self, wait_s: float = 0.0) -> Iterator[None]:
        # A Volume has no lock a flock could hold across containers; two runs on one Volume
        # store would each redo the other's in-flight shards (wasted GPU time, never a wrong
        # file: markers are committed after their data). One run per Volume store is the user's job.
        yield

    def prepare(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The download step in the cloud: the source goes straight from the Hub into the Volume."""
        planned = self._ops.call("prepare", {**settings, "store": mount_path(self.root)})
        return {**planned, "store": self.root}

    def export(self, upload_to: str | None) -> dict[str, Any]:
        """The export step in the cloud: card, promotion, upload from Modal to the Hub."""
        return self._ops.call("export", mount_path(self.root), self.gen, upload_to)
