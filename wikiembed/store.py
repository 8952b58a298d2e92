"""The run store: one folder that holds everything needed to resume a run.

Layout (see docs/STORE.md): `manifest.json`, `snapshot/`, `chunks/`, `data/`,
`_done/`, `_failed/`, `README.md`. A shard is done exactly when its marker
`_done/NNNNN.json` exists and matches `data/NNNNN.parquet` (size and sha256);
anything else (temp files, a marker without its file, a file without its
marker) means "not done". Every write is temp + fsync + rename.

A store lives on a local disk or on a Modal Volume mounted into a container. The
code is the same filesystem code either way; a Volume only adds two points of
synchronisation (`wikiembed.store_files.StoreSync`): `refresh()` before reading what
other containers wrote, and a commit after each write, with a shard's data committed
before its marker, so no other container ever sees a marker whose data it cannot see.
What a reader is handed (`ShardState`, `Part`) is in `wikiembed.store_parts`; how a
manifest's and a marker's JSON are read, layout checks included, in `wikiembed.records`.

Touches: only the store folder (and, through `sync`, the Volume it lives on).
"""

from __future__ import annotations

import json
import os
import socket
import shlex
import time
from pathlib import Path
from typing import Any

import orjson

from wikiembed import atomic
from wikiembed.atomic import pid_alive
from wikiembed.errors import InputError, StoreError
from wikiembed.records import FORMAT, Manifest, Marker, manifest_of, marker_of, misfit
from wikiembed.results import Building
from wikiembed.store_files import LOCAL, StoreSync, each_in_threads
from wikiembed.store_files import StoreLock, sha256_file, store_os_error, write_json_atomic  # noqa: F401 (re-exported)
from wikiembed.store_parts import Part, ShardState


class Store:
    """Paths, manifest and markers of one run store, at one generation.

    A store holds generations (`gens/<id>/`, one per source fingerprint), each
    with its own manifest, snapshot, chunks, data and markers. `current` is a
    symlink to the published generation, and `data`, `manifest.json`,
    `_done`, `_failed` and `README.md` at the top are symlinks through
    `current`, so swapping that one link switches a reader from one version
    to the next atomically. `next` points at a generation being built to
    replace `current` (an incremental run), until it is complete.
    """

    LINKS = ("manifest.json", "data", "_done", "_failed", "README.md")

    def __init__(self, root: str | Path, gen: str | None = None, sync: StoreSync = LOCAL) -> None:
        self.root = Path(root).expanduser().resolve()
        self.sync = sync
        self.gen = gen if gen is not None else self.active_gen()
        self._flat: Path | None = None
        self.named = self.root  # the path it was opened by (`at` keeps a generation folder's)

    @classmethod
    def at(cls, path: str | Path) -> "Store":
        """The store a path names, for reading and publishing: a store root (read at its published
        generation: a run stopped while building the next version never hides the one that is
        published), one generation folder `ROOT/gens/ID` (how a user asks for the unfinished one),
        or a plain folder with the same layout (`manifest.json`, `data/`, `_done/`, ...) such as a
        copy of one generation."""
        resolved = Path(path).expanduser().resolve()
        if resolved.parent.name == "gens" and (resolved / "manifest.json").exists():
            store = cls(resolved.parent.parent, resolved.name)
            store.named = resolved
            return store
        store = cls(resolved)
        store.gen = store.pointer("current") or store.gen
        if store.gen is None and (resolved / "manifest.json").is_file() and not (resolved / "gens").exists():
            store.gen, store._flat = resolved.name, resolved
        return store

    def building(self) -> Building | None:
        """The generation `next` names while it is not the one this Store reads: its id, folder, and
        shard counts, so a reader of the published version is told that a newer one is unfinished
        (and how to look at it) without acting on it."""
        nxt = self.pointer("next")
        if nxt is None or nxt == self.gen or self._flat is not None:
            return None
        other = Store(self.root, nxt, self.sync)
        try:
            manifest = other.read_manifest()
            states = other.states(manifest)
        except StoreError as exc:
            return Building(generation=nxt, path=str(other.dir), error=str(exc))
        return Building(generation=nxt, path=str(other.dir), source=manifest.source.spec, total=len(states),
                        done=sum(s.state == "done" for s in states), failed=sum(s.state == "failed" for s in states))

    def refresh(self) -> None:
        """See what other machines committed (a Volume's `reload()`; nothing on a local disk)."""
        self.sync.reload()
        if self.gen is None:
            self.gen = self.active_gen()

    def pointer(self, name: str) -> str | None:
        """The generation `current` or `next` points at, or None."""
        try:
            return Path(os.readlink(self.root / name)).name
        except OSError:
            return None

    def active_gen(self) -> str | None:
        """The generation status and rerun work on: the one being built, else the published one."""
        return self.pointer("next") or self.pointer("current")

    def set_pointer(self, name: str, gen: str | None) -> None:
        """Atomically point `current`/`next` at a generation (or remove the pointer)."""
        link = self.root / name
        if gen is None:
            atomic.remove(link)
            return
        atomic.replace_link(link, f"gens/{gen}")
        if name == "current":
            for entry in self.LINKS:
                top = self.root / entry
                if not top.is_symlink():
                    if top.exists():
                        raise StoreError(f"store {self.root}: {top} is not a wikiembed link; use an empty folder for --store.")
                    os.symlink(f"current/{entry}", top)

    def check_root(self) -> None:
        """Refuse a --store that is a file, or a folder holding files of its own where the store's
        links go: checked before anything is written, so a refused folder is left as it was."""
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"--store {self.root} is a file; give a folder (a new one, or a wikiembed store).")
        foreign = [name for name in self.LINKS if (self.root / name).exists() and not (self.root / name).is_symlink()]
        if foreign:
            raise InputError(
                f"--store {self.root} holds {', '.join(foreign)} of its own, so it is not a wikiembed store; "
                "use an empty folder (or a wikiembed store) for --store. Nothing was changed there."
            )

    # paths -----------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        if self._flat is not None:
            return self._flat
        if self.gen is None:
            raise StoreError(self.why_no_generation())
        return self.root / "gens" / self.gen

    def why_no_generation(self) -> str:
        """Why there is no generation to read: not a folder, never started, or a damaged store (say which)."""
        if self.root.exists() and not self.root.is_dir():
            return (f"--store {self.root} is a file, not a run store; give the folder a `wikiembed run` wrote "
                    "(the path given to its --store), or a new folder to `wikiembed run` into.")
        gens = sorted(p.name for p in (self.root / "gens").glob("*") if p.is_dir()) if (self.root / "gens").is_dir() else []
        if not gens:
            what = ("does not exist, so no run was started here" if not self.root.exists()
                    else "has no manifest.json and no `current` link, so no run was started here")
            return (f"store {self.root} {what}; point --store at a run store made by `wikiembed run`, "
                    f"or start one with `wikiembed run --source ... --store {shlex.quote(str(self.root))}`.")
        planner = self.lock_holder()
        if planner:
            return (f"store {self.root}: no generation is published yet: the first run, {planner}, is still planning "
                    f"generation {', '.join(gens)}; wait for it to publish one (`wikiembed status --store "
                    f"{shlex.quote(str(self.root))}` shows it then), and run this again.")
        return (f"store {self.root}: no generation is published (no link `current`), but generations "
                f"{', '.join(gens)} are there: a first run was stopped while planning, or the link was lost. Run the "
                "same `wikiembed run` command again: it finishes planning (or re-creates the link) and resumes.")

    def lock_holder(self) -> str | None:
        """The run holding the store's lock ("pid N on HOST", as it wrote it), when that process is alive on this
        machine; else None. Read from the lock file, never by taking the lock: a run starting meanwhile must find it free."""
        try:
            text = (self.root / ".lock").read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return None
        words = text.split()
        if len(words) != 4 or words[0] != "pid" or not words[1].isdigit() or words[3] != socket.gethostname():
            return None
        pid = int(words[1])
        return text if pid != os.getpid() and pid_alive(pid) else None

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    @property
    def snapshot_path(self) -> Path:
        return self.dir / "snapshot" / "source.parquet"

    @property
    def card_path(self) -> Path:
        return self.dir / "README.md"

    def chunks_path(self, shard: int) -> Path:
        return self.dir / "chunks" / f"{shard:05d}.parquet"

    def data_path(self, shard: int) -> Path:
        return self.dir / "data" / f"{shard:05d}.parquet"

    def done_path(self, shard: int) -> Path:
        return self.dir / "_done" / f"{shard:05d}.json"

    def failed_path(self, shard: int) -> Path:
        return self.dir / "_failed" / f"{shard:05d}.json"

    # manifest --------------------------------------------------------------------
    def exists(self) -> bool:
        return self.gen is not None and self.manifest_path.exists()

    def read_manifest(self) -> Manifest:
        """The generation's manifest (`wikiembed.records.Manifest`): the one place it is read."""
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            done = len(list((self.dir / "_done").glob("*.json"))) if (self.dir / "_done").is_dir() else 0
            raise StoreError(
                f"store {self.root}: {self.manifest_path} is missing, so the store was damaged or a run was killed "
                f"while creating it; run the same `wikiembed run` that made this generation again (its source, model "
                f"and options): it rebuilds manifest.json from the source and keeps the {done} done shard(s) whose "
                "rows its plan cuts alike; or restore the store from a backup."
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            done = len(list((self.dir / "_done").glob("*.json"))) if (self.dir / "_done").is_dir() else 0
            raise StoreError(
                f"store {self.root}: {self.manifest_path} is not valid JSON ({exc}), so it was damaged; remove it "
                f"(`rm {shlex.quote(str(self.manifest_path))}`) and run the same `wikiembed run` that made this generation "
                f"again (its source, model and options): it rebuilds manifest.json from the source and keeps the {done} done "
                "shard(s) whose rows its plan cuts alike, embedding none of them again; or restore it from a backup."
            ) from None
        except OSError as exc:
            raise StoreError(f"store {self.root}: {self.manifest_path} cannot be read ({exc}); check its permissions or the disk.") from exc
        return manifest_of(manifest, f"store {self.root}")

    def write_manifest(self, manifest: Manifest) -> None:
        """Write the generation's manifest (atomically), stamped with this layout's format: the one place it is written."""
        record = manifest.model_dump(mode="json") | {"format": FORMAT, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json_atomic(self.manifest_path, record)
        self.sync.commit()

    def ensure_writable(self) -> None:
        """Create the store's folders, failing early with a clear message if that's impossible."""
        try:
            for sub in ("snapshot", "chunks", "data", "_done", "_failed"):
                (self.dir / sub).mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise store_os_error(exc, self.root) from exc

    # parts: what a reader reads --------------------------------------------------
    @property
    def dropped_path(self) -> Path:
        """The ids of the articles each kept shard file of an earlier generation no longer holds for
        this one (`gen`, `shard`, `id`); only a generation with a `base` has it."""
        return self.dir / "dropped.parquet"

    def dropped(self) -> dict[tuple[str, int], Any]:
        """{(gen, shard): pyarrow array of the ids dropped from that kept file}."""
        if not self.dropped_path.exists():
            return {}
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        table = pq.read_table(self.dropped_path)
        out: dict[tuple[str, int], Any] = {}
        keys = table.group_by(["gen", "shard"]).aggregate([]).to_pylist()
        for key in keys:
            mask = pc.and_(pc.equal(table["gen"], key["gen"]), pc.equal(table["shard"], key["shard"]))
            out[(key["gen"], key["shard"])] = table.filter(mask).column("id").combine_chunks()
        return out

    def parts(self, manifest: Manifest | None = None, states: "list[ShardState] | None" = None) -> list[Part]:
        """Every data file this generation's rows are in, in order: the kept files of earlier
        generations (each with the ids it no longer holds), then its own done shards."""
        manifest = manifest or self.read_manifest()
        drops = self.dropped() if manifest.base else {}
        out = [
            Part(b.gen, b.shard, self.root / "gens" / b.gen / "data" / f"{b.shard:05d}.parquet", b.sha256, b.bytes, b.rows,
                 b.chunks, b.arrow_bytes, drops.get((b.gen, b.shard)), b.dropped_rows, b.dropped_chunks)
            for b in manifest.base
        ]
        for st in states if states is not None else self.states(manifest):
            if st.state == "done" and st.marker is not None:
                m = st.marker
                out.append(Part(str(self.gen), st.shard, self.data_path(st.shard), m.sha256, m.bytes, m.rows, m.chunks, m.arrow_bytes))
        return out

    def verify_base(self, manifest: Manifest) -> list[str]:
        """The kept files of earlier generations whose bytes no longer match their markers (sha256): each as
        `GEN/NNNNN`, with why."""
        def intact(b: Any) -> bool:
            path = self.root / "gens" / b.gen / "data" / f"{b.shard:05d}.parquet"
            try:
                return path.stat().st_size == b.bytes and sha256_file(path) == b.sha256
            except OSError:
                return False

        base = list(manifest.base)
        return [f"{b.gen}/{b.shard:05d}" for b, ok in zip(base, each_in_threads(intact, base)) if not ok]

    # markers ---------------------------------------------------------------------
    def read_done(self, shard: int, manifest: Manifest | None = None) -> Marker | None:
        """The done marker if (and only if) it matches its data file and its generation; otherwise None.

        Like git's index, a file whose size, mtime and inode equal the marker's
        record is trusted without rehashing (resuming 1,000 shards must not read
        them all); any difference triggers a full sha256 check. With the generation's
        `manifest`, a marker whose vectors are of another kind than the ones the generation
        holds vouches for nothing either (`misfit`).
        """
        marker = self._read_done_at(shard, str(self.done_path(shard)), str(self.data_path(shard)))
        if marker is not None and manifest is not None and misfit(marker, manifest.vectors):
            return None
        return marker

    def _read_done_at(self, shard: int, done_file: str, data_file: str) -> Marker | None:
        # Plain strings: `states()` calls this for every shard, and pathlib's joins cost more than the check.
        try:
            with open(done_file, "rb") as fh:
                marker = marker_of(orjson.loads(fh.read()), done_file)  # orjson: a third of json.load's time, which dominated a resume's scan
            st = os.stat(data_file)
        except (FileNotFoundError, json.JSONDecodeError, OSError):
            return None
        if marker is None or st.st_size != marker.bytes:
            return None
        if not self.sync.stable_stat:
            # Each container holds its own copy of a Volume file (its own inode); the data was
            # committed before its marker and hashed by the writer, and publishing re-hashes it.
            return marker
        if (st.st_mtime_ns, st.st_ino) != (marker.mtime_ns, marker.inode):
            return self.verify_done(shard)
        return marker

    def verify_done(self, shard: int) -> Marker | None:
        """A full sha256 check of the data file against its marker (used before publishing)."""
        try:
            marker = marker_of(json.loads(self.done_path(shard).read_text(encoding="utf-8")), str(self.done_path(shard)))
            if marker is None or sha256_file(self.data_path(shard)) != marker.sha256:
                return None
        except (FileNotFoundError, json.JSONDecodeError, OSError):
            return None
        return marker

    def mark_done(self, shard: int, marker: Marker) -> None:
        """Record a shard as done. Its data is committed first: a marker never becomes visible
        anywhere before the data it vouches for."""
        self.sync.commit()
        write_json_atomic(self.done_path(shard), marker.model_dump(mode="json"))
        atomic.remove(self.failed_path(shard))
        self.sync.commit()

    def mark_failed(self, shard: int, error: str, attempts: int) -> None:
        previous = self.read_failed(shard) or {}
        write_json_atomic(
            self.failed_path(shard),
            {
                "shard": shard,
                "error": error[:4000],
                "attempts": int(previous.get("attempts", 0)) + attempts,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        self.sync.commit()

    def read_failed(self, shard: int) -> dict[str, Any] | None:
        try:
            return json.loads(self.failed_path(shard).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, OSError):
            return None

    def forget(self, shard: int) -> None:
        """Make a shard pending again (for reruns): drop its marker first, then its file."""
        atomic.remove(self.done_path(shard))
        atomic.remove(self.data_path(shard))
        self.sync.commit()

    def states(self, manifest: Manifest | None = None, *, verify: bool = False) -> list[ShardState]:
        """Every planned shard's state, from one listing of `_done/` and `_failed/`.

        A marker is trusted by its file's stat (see `read_done`); `verify=True` rehashes every
        data file instead, which finds silent corruption at the cost of reading the whole store.
        """
        manifest = manifest or self.read_manifest()
        planned = manifest.plan.shards
        # The kind every done shard must hold: the generation's, or (before a run could pin it) the
        # first done shard's, so a store of two kinds never reads as complete.
        reference = manifest.vectors
        done_names = {p.name for p in (self.dir / "_done").glob("*.json")}
        failed_names = {p.name for p in (self.dir / "_failed").glob("*.json")}
        done_dir, data_dir = str(self.dir / "_done"), str(self.dir / "data")
        verified: dict[int, Marker | None] = {}
        if verify:
            done = [k for k in range(len(planned)) if f"{k:05d}.json" in done_names]
            verified = dict(zip(done, each_in_threads(self.verify_done, done)))
        out = []
        for k, (start, end) in enumerate(planned):
            name = f"{k:05d}.json"
            if name not in done_names:
                marker = None
            elif verify:
                marker = verified[k]
            else:
                marker = self._read_done_at(k, os.path.join(done_dir, name), os.path.join(data_dir, f"{k:05d}.parquet"))
            problem = misfit(marker, reference) if marker is not None else None
            if marker is not None and not problem:
                reference = reference or marker.vectors
                out.append(ShardState(k, "done", end - start, marker.chunks, marker=marker))
                continue
            if name in done_names:
                out.append(ShardState(k, "changed", end - start, None, problem or "data file missing or changed since marked done"))
                continue
            failed = self.read_failed(k) if name in failed_names else None
            if failed is not None:
                out.append(ShardState(k, "failed", end - start, None, failed.get("error"), failed.get("attempts", 0)))
            else:
                out.append(ShardState(k, "pending", end - start, None))
        return out

    def clean_temp_files(self) -> int:
        """Remove the temp files (`atomic.temp_path`) that killed processes left anywhere in the generation's
        folder (snapshot, chunks, data, keys, markers, tables, index builds) and the store's `current`/`next`
        links' temps; they are never read as data. Never through a link (`atomic.remove_temps`)."""
        removed = atomic.remove_temps(self.dir, recursive=True)
        if self.root != self.dir:
            removed += atomic.remove_temps(self.root)
        return removed

    # lock ------------------------------------------------------------------------
    def lock(self, wait_s: float = 0.0) -> "StoreLock":
        self.check_root()
        return StoreLock(self.root / ".lock", wait_s)
