"""A run store on a Modal Volume: `--store modal:VOLUME/PATH`.

Two views of the same store, one interface:

- Inside a container the Volume is mounted at `STORE_MOUNT`, and the store is the
  ordinary filesystem `Store` at `STORE_MOUNT/PATH` with a `VolumeSync`: `reload()`
  before reading, `commit()` after writing (a shard's data before its marker).
- Outside Modal (the flow's machine, `wikiembed status` / `rerun` / `export` /
  `upload`) `VolumeStore` answers the same calls the flow makes on a local `Store`
  (`read_manifest`, `states`, `mark_failed`, `forget`) by calling the deployed
  `StoreOps` class (`modal_workers/store_app.py`), which runs `wikiembed.store_ops` at
  the mount. Only control data travels: the manifest's plan, shard states, error texts.

A Volume has no lock that works across machines, so one run per Volume store is a
lease (`VolumeLease`) in the named `modal.Dict` `LOCK_DICT`, renewed by a heartbeat
and expiring on its own when its run dies without releasing it.

`wikiembed.store_location.locate(spec)` picks the view from the spec, so the flow and the CLI take either.

Touches: Modal's API (through the `modal` client and the user's Modal token) for a
Volume store: the `StoreOps` class and the `LOCK_DICT` Dict; nothing else.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Iterator

from wikiembed.atomic import pid_alive
from wikiembed.errors import BackendError, InputError, StoreError
from wikiembed.records import FORMAT, Manifest, manifest_of
from wikiembed.results import Building, Exported, Published
from wikiembed.store_parts import ShardState
from wikiembed.store_results import GenerationView, Planned

if TYPE_CHECKING:
    from wikiembed.settings import RunSettings

PREFIX = "modal:"
# Where the deployed apps mount the store Volume; a store `modal:VOLUME/PATH` is at STORE_MOUNT/PATH there.
STORE_MOUNT = "/store"
DEFAULT_VOLUME = "wikiembed-store"

# The named Dict that holds one lease per Volume store (key `VOLUME/PATH`). Modal drops an entry
# after 7 days without reads or writes, which also clears the takeover records below.
LOCK_DICT = "wikiembed-locks"
# How long a lease outlives its last renewal: a run killed without releasing it (SIGKILL, a lost
# machine) blocks its store this long at most. Long enough to ride out a few missed renewals
# (network hiccups) and modest clock differences between machines (expiry is wall-clock time
# written by the holder, read by the next run); tests shorten it with the environment variable.
LEASE_S = float(os.environ.get("WIKIEMBED_VOLUME_LEASE_S", "90"))
# Renewals per lease period: a holder must miss this many in a row before another run may take over.
RENEWALS_PER_LEASE = 6


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


def cloud_target(store: str, target: str | None) -> str | None:
    """A publishing target as the containers of the Volume store `store` see it: `hub:` as is, `modal:VOLUME/PATH`
    as a folder at the mount. A folder of this machine is refused: the data would have to come down first."""
    volume = (parse_spec(store) or ("", ""))[0]
    if not target or target.startswith("hub:"):
        return target
    parsed = parse_spec(target) if target.startswith(PREFIX) else None
    if parsed is None:
        raise InputError(
            f"--to/--upload-to {target!r}: the store {store} is on a Modal Volume, so it publishes from "
            f"there: give hub:ORG/NAME (Volume to Hub), or modal:{volume}/FOLDER for a folder on the same "
            f"Volume (then `modal volume get {volume} FOLDER` fetches it, if you want it here)."
        )
    if parsed[0] != volume:
        raise InputError(
            f"--to/--upload-to {target!r}: the store is on the Volume {volume!r}, and its containers mount "
            f"only that one; give modal:{volume}/FOLDER."
        )
    return f"dir:{mount_path(target)}"


class VolumeStore:
    """A Volume store seen from outside Modal: each call runs the filesystem code in a `StoreOps` container."""

    def __init__(self, spec: str, gen: str | None = None, ops: Any = None) -> None:
        from wikiembed.backends.modal_client import store_ops  # lazy: `status` on a local store needs no Modal

        self.volume, self.path = parse_spec(spec) or ("", "")
        self.root = spec  # what the flow shows and passes on: the spec, never a local path
        self._ops = ops or store_ops(self.volume)
        self._manifest: Manifest | None = None
        self._pointers: dict[str, str | None] | None = None
        self.gen = gen  # None: the generation status and rerun work on, learnt from the first view

    def _view(self, with_states: bool = True, verify: bool = False) -> GenerationView:
        # `verify` is sent only when asked: a StoreOps app deployed before it existed still answers the rest.
        view = GenerationView.from_json(
            self._ops.call("view", mount_path(self.root), self.gen, with_states, *((True,) if verify else ()))
        )
        self.gen = view.gen
        self._manifest = manifest_of({"format": FORMAT, **view.manifest}, f"store {self.root}")  # fixed for a generation: read once
        self._pointers = view.pointers or {}
        return view

    def exists(self) -> bool:
        try:
            self.read_manifest()
        except Exception:  # noqa: BLE001 - any answer but a manifest means "no run here"
            return False
        return True

    def read_manifest(self) -> Manifest:
        if self._manifest is None:
            self._view(with_states=False)
        assert self._manifest is not None
        return self._manifest

    def states(self, manifest: Manifest | None = None, *, verify: bool = False) -> list[ShardState]:
        """Every shard's state, read in a container at the Volume (`verify`: rehashing every data file there)."""
        return [ShardState(s.shard, s.state, s.rows, s.chunks, s.error, s.attempts) for s in self._view(verify=verify).states]

    def pointer(self, name: str) -> str | None:
        """The generation `current` (published) or `next` (being built) points at, as of the last view."""
        if self._pointers is None:
            self._view(with_states=False)
        return (self._pointers or {}).get(name)

    def building(self) -> Building | None:
        """Always None: a Volume store is viewed at the generation being built (`next`, else `current`), which
        `status` shows with what is published beside it; there is no other unfinished one to report."""
        return None

    def mark_failed(self, shard: int, error: str, attempts: int) -> None:
        self._ops.call("mark_failed", mount_path(self.root), self.gen, shard, error, attempts)

    def forget(self, shard: int) -> None:
        self._ops.call("forget", mount_path(self.root), self.gen, [shard])

    def lock(self, wait_s: float = 0.0) -> "VolumeLease":
        """One run per Volume store: a lease in `LOCK_DICT`, refused (after `wait_s`) while another run holds it."""
        return VolumeLease(self.root, f"{self.volume}/{self.path}", wait_s)

    def prepare(self, settings: "RunSettings") -> Planned:
        """The download step in the cloud: the source goes straight from the Hub into the Volume."""
        self.cloud_target(settings.upload_to)  # a wrong --upload-to fails now, not after every shard
        planned = Planned.from_json(self._ops.call("prepare", {**settings.model_dump(), "store": mount_path(self.root)}))
        return planned.replace(store=self.root)

    def export(self, upload_to: str | None) -> Exported:
        """The export step in the cloud: card, promotion, upload from Modal to the Hub (or a folder on the Volume)."""
        result = Exported.from_json(self._ops.call("export", mount_path(self.root), self.gen, self.cloud_target(upload_to)))
        if result.published:
            result = result.replace(published=self._as_seen_here(result.published, upload_to))
        return result

    def publish(self, target: str, **options: Any) -> Published:
        """`wikiembed export` / `upload` of a Volume store, run in a `StoreOps` container: the done
        shards go from the Volume to the Hub (`hub:ORG/NAME`) or to a folder on the same Volume
        (`modal:VOLUME/PATH`), never through this machine. `options` are `publish.publish`'s."""
        target_there = self.cloud_target(target)
        # Under the store's lease: a Volume has no file lock that keeps a run's export and this one from
        # writing the same staging folder.
        with self.lock():
            published = Published.from_json(self._ops.call("publish", mount_path(self.root), target_there, options))
        return self._as_seen_here(published, target)

    def cloud_target(self, target: str | None) -> str | None:
        """A publishing target as the container sees it (`cloud_target`)."""
        return cloud_target(self.root, target)

    def _as_seen_here(self, published: Published, target: str | None) -> Published:
        """The container's answer with the target and folder as the user named them (not the mount path)."""
        if target and target.startswith(PREFIX):
            return published.replace(target=target, url=target)
        return published


def lock_dict() -> Any:
    """The `LOCK_DICT` Dict (created on first use)."""
    import modal  # lazy: a local store needs no Modal

    return modal.Dict.from_name(LOCK_DICT, create_if_missing=True)


class VolumeLease:
    """An exclusive, expiring lease on one Volume store, held by one run.

    Taking it is one atomic `Dict.put(key, lease, skip_if_exists=True)`: True means ours. A
    lease names its holder (host, pid, start) and carries its expiry; a heartbeat thread
    renews it `RENEWALS_PER_LEASE` times per `LEASE_S`. A run that finds a dead lease (expired,
    or held by a process of its own machine that no longer exists, as when the same command
    follows a SIGKILL) may take it over, but only the first such run: Modal's Dict has no
    compare-and-swap, so each taker must first create the record `KEY#took:TOKEN` of the dead
    lease's token (again `skip_if_exists`), and only the run that created it overwrites the lease.

    A holder that finds its lease taken over (it missed renewals for a whole period) warns
    on stderr, sets `lost` and leaves the lease alone; the flow then sends no more shards and
    fails once those in flight finish (`run_shards`). Until then both runs may write the same
    shard, which wastes time but never writes a wrong file (markers follow their data).
    """

    def __init__(self, store: str, key: str, wait_s: float = 0.0, locks: Any = None, lease_s: float | None = None) -> None:
        self.store = store
        self.key = key
        self.wait_s = wait_s
        self.lease_s = LEASE_S if lease_s is None else lease_s
        self._locks = locks
        self.token = uuid.uuid4().hex
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.lost: dict[str, Any] | None = None  # the lease that replaced ours, if it was taken over
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    @property
    def locks(self) -> Any:
        if self._locks is None:
            self._locks = lock_dict()
        return self._locks

    def _lease(self) -> dict[str, Any]:
        return {"token": self.token, "host": socket.gethostname(), "machine": _machine(), "pid": os.getpid(),
                "started": self.started, "store": self.store, "lease_s": self.lease_s,
                "expires": time.time() + self.lease_s}  # fmt: skip

    @staticmethod
    def _dead(held: dict[str, Any]) -> bool:
        """Expired, or held by a process of this machine that no longer exists (no need to wait then)."""
        if float(held.get("expires", 0)) <= time.time():
            return True
        here = _machine()
        return here is not None and held.get("machine") == here and not pid_alive(int(held.get("pid", 0)))

    def _took(self, token: str) -> str:
        return f"{self.key}#took:{token}"

    def _try_take(self) -> dict[str, Any] | None:
        """None once the lease is ours; else the live lease that holds the store."""
        while True:
            if self.locks.put(self.key, self._lease(), skip_if_exists=True):
                return None
            held = self.locks.get(self.key)
            if held is None:
                continue  # released between our put and our get: try again
            if not self._dead(held):
                return held
            if not self.locks.put(self._took(held["token"]), self.token, skip_if_exists=True):
                return held  # another run is taking this dead lease over
            if (self.locks.get(self.key) or {}).get("token") != held["token"]:
                continue  # its holder came back and released or renewed it: start over
            self.locks.put(self.key, self._lease())
            return None

    def __enter__(self) -> "VolumeLease":
        deadline = time.monotonic() + self.wait_s
        while True:
            with _dict_errors(self.store):
                held = self._try_take()
            if held is None:
                break
            if time.monotonic() >= deadline:
                raise StoreError(self._in_use(held))
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0.01)))
        self._beat = threading.Thread(target=self._renew, name="wikiembed-lease", daemon=True)
        self._beat.start()
        return self

    def _in_use(self, held: dict[str, Any]) -> str:
        left = max(float(held.get("expires", 0)) - time.time(), 0.0)
        return (
            f"store {self.store} is in use by the run on host {held.get('host')}, pid {held.get('pid')}, "
            f"started {held.get('started')}. Wait for that run to finish (or stop it), or use another --store. "
            f"If that run is dead, its lease expires within {left:.0f} s (it is renewed every "
            f"{float(held.get('lease_s', self.lease_s)) / RENEWALS_PER_LEASE:.0f} s while the run lives); run the same command again then."
        )

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / RENEWALS_PER_LEASE):
            try:
                held = self.locks.get(self.key)
                if (held or {}).get("token") != self.token or self.locks.contains(self._took(self.token)):
                    self.lost = held or {}
                    print(
                        f"wikiembed: the lease on store {self.store} expired (this run missed its renewals) and "
                        f"was taken by host {self.lost.get('host')}, pid {self.lost.get('pid')}; both runs now "
                        "work on it: stop one of them.", file=sys.stderr, flush=True,
                    )  # fmt: skip
                    return
                self.locks.put(self.key, self._lease())
            except Exception as exc:  # noqa: BLE001 - a failed renewal is retried at the next beat
                print(f"wikiembed: could not renew the lease on store {self.store}: {type(exc).__name__}: {exc}",
                      file=sys.stderr, flush=True)  # fmt: skip

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self.lost is not None:
            return
        try:
            if (self.locks.get(self.key) or {}).get("token") == self.token:
                self.locks.pop(self.key, None)
        except Exception as exc:  # noqa: BLE001 - the lease then expires on its own
            print(f"wikiembed: could not release the lease on store {self.store} ({type(exc).__name__}: {exc}); "
                  f"it expires within {self.lease_s:.0f} s.", file=sys.stderr, flush=True)  # fmt: skip


def _machine() -> str | None:
    """This machine, as a lease records it: host name and boot id (containers on one host share the
    boot id but not, by default, the host name; a pid means something only on its own machine).
    None where there is no boot id (not Linux): a lease is then dead only once it expires."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return f"{socket.gethostname()}/{fh.read().strip()}"
    except OSError:
        return None


@contextlib.contextmanager
def _dict_errors(store: str) -> Iterator[None]:
    """Modal's failures while taking a lease, as the project's error with its fix."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        import modal.exception

        fix = ("run `modal token new` or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET" if isinstance(exc, modal.exception.AuthError)
               else "check the network and Modal's status, then run the same command again")  # fmt: skip
        raise BackendError(
            f"store {store}: could not take its lease in the Modal Dict {LOCK_DICT!r} ({type(exc).__name__}: {exc}); {fix}."
        ) from exc
