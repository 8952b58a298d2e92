"""A stand-in for Modal's cloud as the flow uses it: deployed classes, containers, one Volume, Dicts.

What it may touch: a folder of its own (`CloudDir`), the subprocesses it starts as
containers, and whatever the real library code they run touches (the store on the
emulated Volume, the TEI stand-in server it is pointed at).

It replaces `modal.Cls.from_name(app, cls)` and runs the real code behind the deployed
classes (`wikiembed.store_ops`) in separate processes, following the contract Modal
documents (modal.com/docs/guide/volumes, /docs/guide/retries):

- A container mounts the Volume as it was last committed. Its own writes reach the
  Volume (and other containers) only when it calls `commit()`; others' commits reach it
  only when it calls `reload()`, which fails while it holds a file open. Concurrent
  commits of the same file: the last one wins.
- A container is a process that serves one input at a time (the shard classes'
  `max_inputs=1`); at most `max_containers` run, further inputs wait.
- An exception raised by the function reaches the caller as that exception.
- A container that dies while working is replaced and its input rescheduled on a new
  container, which mounts the committed state.
- A container sees the Volume at its mount (`/store`): a model folder named by its path
  there (a fine-tune's output, which the shard containers load) is the container's copy,
  and paths in its answers are the mount's.
- A named Dict (`modal.Dict.from_name(name, create_if_missing=...)`, modal.com/docs/
  reference/modal.Dict) is one key-value store for every process: values are stored
  pickled (a changed value is seen only once it is put back), `put(..., skip_if_exists=
  True)` is atomic and returns whether it wrote, and an entry expires after 7 days
  without a read or a write. A missing Dict without `create_if_missing` is NotFoundError.

Faults, switchable while running (`CloudDir.set_faults`): `kill_after_data` (shard ids
whose container dies once, after committing the shard's data and before its marker),
`fail_shards` (shard id -> message: `run_shard` raises a permanent `BackendError`),
`hold_prepare` (a `prepare` call, the download step, hangs until its container is killed:
a run stuck early, holding its store).
Every call's pickled request and answer sizes go to `calls.jsonl`; every commit and reload (its
container, seconds, files and bytes copied) to `volume_ops.jsonl`.

A container starts warm, as Modal restores one from a memory snapshot taken after its imports: a
process that has imported the container's code once (one per caller and environment) forks each
container, which then runs exactly as a process started for it would (`tests/warm.py`).

Use: `with ModalCloud(CloudDir(tmp), backend_opts={...}).installed(monkeypatch): ...` in a
test, or `python -m tests.standins.modal_cloud CLOUD_DIR -- run --store modal:vol/x ...`
to run the CLI against it in a subprocess (a flow that can be SIGKILLed).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from tests.warm import warm_for

ROOT = Path(__file__).resolve().parents[2]
MOUNT = "/store"  # wikiembed.volume_store.STORE_MOUNT, where the deployed apps mount the Volume


# ---------------------------------------------------------------------------
# The cloud's folder: the committed Volume, containers' private views, config, faults, call log
# ---------------------------------------------------------------------------


class CloudDir:
    def __init__(self, path: Path, volume: str = "wikiembed-store") -> None:
        self.path = Path(path)
        self.volume_name = volume
        self.committed = self.path / "volume"
        self.committed.mkdir(parents=True, exist_ok=True)

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def faults_file(self) -> Path:
        return self.path / "faults.json"

    @property
    def calls_file(self) -> Path:
        return self.path / "calls.jsonl"

    @property
    def volume_ops_file(self) -> Path:
        return self.path / "volume_ops.jsonl"

    def configure(self, backend_opts: dict[str, Any], max_containers: int = 2) -> None:
        self.config_file.write_text(json.dumps({"backend_opts": backend_opts, "max_containers": max_containers}))

    def config(self) -> dict[str, Any]:
        return json.loads(self.config_file.read_text())

    def set_faults(self, kill_after_data: list[int] = (), fail_shards: dict[int, str] | None = None, hold_prepare: bool = False) -> None:
        tmp = self.faults_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"kill_after_data": list(kill_after_data), "fail_shards": {str(k): v for k, v in (fail_shards or {}).items()},
                                   "hold_prepare": hold_prepare}))  # fmt: skip
        os.replace(tmp, self.faults_file)

    def faults(self) -> dict[str, Any]:
        try:
            return json.loads(self.faults_file.read_text())
        except FileNotFoundError:
            return {"kill_after_data": [], "fail_shards": {}, "hold_prepare": False}

    def held_prepares(self) -> list[int]:
        """Pids of the containers whose `prepare` call is held (see `hold_prepare`)."""
        return [int(p.read_text()) for p in self.path.glob("holding-*")]

    def calls(self) -> list[dict[str, Any]]:
        if not self.calls_file.exists():
            return []
        return [json.loads(line) for line in self.calls_file.read_text().splitlines() if line.strip()]

    def volume_ops(self) -> list[dict[str, Any]]:
        """The commits and reloads so far: op, pid, shard, seconds, files and bytes copied."""
        if not self.volume_ops_file.exists():
            return []
        return [json.loads(line) for line in self.volume_ops_file.read_text().splitlines() if line.strip()]

    def store(self, path: str) -> Path:
        """The committed copy of a store `modal:VOLUME/PATH`: what any new container would mount."""
        return self.committed / path

    @contextlib.contextmanager
    def commit_lock(self) -> Iterator[None]:
        """Commits and reloads are atomic with respect to each other (a commit is one Volume version)."""
        with open(self.path / ".commit-lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------
# Named Dicts: one pickled file per Dict, each operation atomic under a file lock
# ---------------------------------------------------------------------------

DICT_IDLE_EXPIRY_S = 7 * 24 * 3600  # Modal: an entry expires after 7 days without a read or write
_NO_DEFAULT = object()


class CloudDict:
    """`modal.Dict` as the contract above describes it, shared by every process of the cloud folder."""

    def __init__(self, cloud: CloudDir, name: str, create_if_missing: bool = False) -> None:
        self.cloud = cloud
        self.name = name
        self.path = cloud.path / "dicts" / f"{name}.pickle"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            if not create_if_missing:
                import modal.exception

                raise modal.exception.NotFoundError(f"Dict '{name}' not found")
            with self._entries():
                pass

    @contextlib.contextmanager
    def _entries(self) -> Iterator[dict[Any, list]]:
        """key -> [pickled value, last read or write]; written back when the block ends."""
        with open(self.path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                entries = pickle.loads(self.path.read_bytes()) if self.path.exists() else {}
                now = time.time()
                entries = {k: v for k, v in entries.items() if now - v[1] < DICT_IDLE_EXPIRY_S}
                yield entries
                tmp = self.path.with_suffix(".tmp")
                tmp.write_bytes(pickle.dumps(entries))
                os.replace(tmp, self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        """True if the pair was written; False if the key existed and `skip_if_exists` was set."""
        data = pickle.dumps(value)
        with self._entries() as entries:
            if skip_if_exists and key in entries:
                return False
            entries[key] = [data, time.time()]
            return True

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    def get(self, key: Any, default: Any = None) -> Any:
        with self._entries() as entries:
            if key not in entries:
                return default
            entries[key][1] = time.time()  # a read keeps an entry alive too
            return pickle.loads(entries[key][0])

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _NO_DEFAULT)
        if value is _NO_DEFAULT:
            raise KeyError(f"{key} not in dict {self.name}")
        return value

    def contains(self, key: Any) -> bool:
        with self._entries() as entries:
            return key in entries

    __contains__ = contains

    def pop(self, key: Any, default: Any = _NO_DEFAULT) -> Any:
        with self._entries() as entries:
            if key in entries:
                return pickle.loads(entries.pop(key)[0])
        if default is _NO_DEFAULT:
            raise KeyError(f"{key} not in dict {self.name}")
        return default

    def __delitem__(self, key: Any) -> None:
        self.pop(key)


# ---------------------------------------------------------------------------
# Inside a container: the Volume contract over a private copy
# ---------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple]:
    """relative path -> (kind, size, mtime_ns, link target) for every file and symlink under root."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if os.path.islink(full):
                out[rel] = ("link", 0, 0, os.readlink(full))
            else:
                st = os.stat(full)
                out[rel] = ("file", st.st_size, st.st_mtime_ns, None)
    return out


def _copy_entry(src_root: Path, dst_root: Path, rel: str, entry: tuple) -> int:
    """Bytes copied."""
    dst = dst_root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.cloudcopy")
    if entry[0] == "link":
        tmp.unlink(missing_ok=True)
        os.symlink(entry[3], tmp)
    else:
        shutil.copy2(src_root / rel, tmp)  # keeps mtime, gets its own inode, as a Volume copy does
    os.replace(tmp, dst)
    return entry[1]


def _remove_entry(root: Path, rel: str) -> None:
    path = root / rel
    if path.is_symlink() or path.is_file():
        path.unlink()


class EmulatedVolume:
    """`VolumeSync` for one container: a private copy of the Volume, published by `commit()`."""

    stable_stat = False

    def __init__(self, cloud: CloudDir, private: Path) -> None:
        self.cloud = cloud
        self.private = private
        self.private.mkdir(parents=True, exist_ok=True)
        self.synced: dict[str, tuple] = {}
        self.shard: int | None = None  # the shard being worked on, for the kill fault
        self.commits = 0
        self.reload()  # the container mounts the Volume as last committed

    def _open_files(self) -> list[str]:
        out = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith(str(self.private) + os.sep):
                    out.append(target)
        return out

    def _log(self, op: str, started: float, files: int, size: int) -> None:
        """One line of `volume_ops.jsonl` (under the commit lock: lines never interleave)."""
        with open(self.cloud.volume_ops_file, "a") as fh:
            fh.write(json.dumps({"op": op, "pid": os.getpid(), "shard": self.shard, "seconds": round(time.perf_counter() - started, 4),
                                 "files": files, "bytes": size}) + "\n")  # fmt: skip

    def reload(self) -> None:
        open_files = self._open_files()
        if open_files:
            raise RuntimeError(f"Volume reload with open files: {open_files}")  # Modal refuses it too
        with self.cloud.commit_lock():
            started, files, size = time.perf_counter(), 0, 0
            committed = _snapshot(self.cloud.committed)
            mine = _snapshot(self.private)
            for rel, entry in committed.items():
                if mine.get(rel) != entry:
                    size += _copy_entry(self.cloud.committed, self.private, rel, entry)
                    files += 1
            for rel in mine.keys() - committed.keys():
                _remove_entry(self.private, rel)
            self.synced = _snapshot(self.private)
            self._log("reload", started, files, size)

    def commit(self) -> None:
        with self.cloud.commit_lock():
            started, files, size = time.perf_counter(), 0, 0
            mine = _snapshot(self.private)
            for rel, entry in mine.items():
                if ".tmp-" in rel:
                    continue  # a file still being written by a live process
                if self.synced.get(rel) != entry:
                    size += _copy_entry(self.private, self.cloud.committed, rel, entry)
                    files += 1
            for rel in self.synced.keys() - mine.keys():
                _remove_entry(self.cloud.committed, rel)
            self.synced = mine
            self._log("commit", started, files, size)
        self.commits += 1
        if self.shard is not None and self.commits == 1 and self.shard in self.cloud.faults()["kill_after_data"]:
            marker = self.cloud.path / f"killed-{self.shard}"
            if not marker.exists():  # once per shard: the rescheduled input then succeeds
                marker.write_text(str(os.getpid()))
                os._exit(137)  # data committed, marker never written: a container lost mid-shard


def _local_root(arg: str, private: Path) -> str:
    if not arg.startswith(MOUNT + "/"):
        raise ValueError(f"store root {arg!r} is not under the mount {MOUNT}")
    return str(private / arg[len(MOUNT) + 1 :])


def _local_target(target: str | None, private: Path) -> str | None:
    """A publishing target: a `dir:` folder under the mount is in the container's copy of the Volume."""
    if target and target.startswith(f"dir:{MOUNT}/"):
        return "dir:" + _local_root(target[len("dir:") :], private)
    return target


def _see_the_mount(private: Path) -> None:
    """Model folders named by their path under the mount resolve to this container's copy of the Volume."""
    from wikiembed import model

    resolve = model.resolve_model_path

    def at_mount(name: str) -> Path:
        return resolve(_local_root(name, private) if name.startswith(MOUNT + "/") else name)

    model.resolve_model_path = at_mount


def _as_mounted(value: Any, private: Path) -> Any:
    """An answer with this container's copy of the Volume written as the mount, as a container on Modal sees it."""
    if isinstance(value, str) and (value == str(private) or value.startswith(str(private) + os.sep)):
        return MOUNT + value[len(str(private)):]
    if isinstance(value, dict):
        return {k: _as_mounted(v, private) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_mounted(v, private) for v in value]
    return value


def _serve(cloud: CloudDir, private: Path, out: BinaryIO, inp: BinaryIO) -> None:
    """The container's loop: one request at a time, the real library function, the answer back."""
    from wikiembed import store_ops
    from wikiembed.errors import BackendError
    from wikiembed.evaluate import compare_at_store
    from wikiembed.finetune import finetune_at_store

    sync = EmulatedVolume(cloud, private)
    _see_the_mount(private)
    from wikiembed.backends.factory import BackendOptions

    # The backend each deployed class opens in its container (TEI for TEIShards, the engine for TorchShards).
    backend_opts = {cls: BackendOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()})
                    for cls, opts in cloud.config()["backend_opts"].items()}
    while True:
        request = _read_frame(inp)
        if request is None:
            return
        cls, method, args = request
        try:
            sync.shard, sync.commits = None, 0
            if method == "run_shard":
                root, gen, shard = args
                sync.shard = shard
                failure = cloud.faults()["fail_shards"].get(str(shard))
                if failure:
                    raise BackendError(f"shard {shard}: {failure}")
                # As TEIShards.run_shard / TorchShards.run_shard call it.
                result = store_ops.run_shard(_local_root(root, private), gen, shard, backend_opts[cls], sync, reuse_previous=True)
            elif method == "calibrate":  # as TEIShards.calibrate / TorchShards.calibrate call it
                root, gen = args
                calibration = store_ops.calibrate_store(_local_root(root, private), gen, backend_opts[cls], sync)
                result = None if calibration is None else calibration.to_json()
            elif method == "prepare":
                if cloud.faults().get("hold_prepare"):
                    (cloud.path / f"holding-{os.getpid()}").write_text(str(os.getpid()))
                    while True:
                        time.sleep(1)
                settings = dict(args[0], store=_local_root(args[0]["store"], private))
                result = store_ops.prepare_store(settings, sync).to_json()  # as StoreOps returns it: plain JSON
            elif method == "view":
                result = store_ops.view_store(_local_root(args[0], private), args[1], sync, *args[2:]).to_json()
            elif method == "mark_failed":
                result = store_ops.mark_failed(_local_root(args[0], private), *args[1:], sync=sync)
            elif method == "forget":
                result = store_ops.forget(_local_root(args[0], private), *args[1:], sync=sync)
            elif method == "export":
                root, gen, upload_to = args
                result = store_ops.export_store(_local_root(root, private), gen, _local_target(upload_to, private), sync=sync).to_json()
            elif method == "publish":
                root, target, options = args
                result = store_ops.publish_store(_local_root(root, private), _local_target(target, private), options, sync=sync).to_json()
            elif (cls, method) == ("Finetune", "run"):  # as Finetune.run calls it: paths relative to the Volume's root
                *paths, settings = args
                result = _as_mounted(finetune_at_store(*(_local_root(f"{MOUNT}/{p.strip('/')}", private) for p in paths),
                                                       settings, sync), private)
            elif (cls, method) == ("Finetune", "compare"):  # as Finetune.compare calls it
                result = _as_mounted(compare_at_store(*(_local_root(f"{MOUNT}/{p.strip('/')}", private) for p in args), sync).to_json(),
                                     private)
            else:
                raise AttributeError(f"{cls} has no method {method!r}")
            answer = ("ok", result)
        except Exception as exc:  # noqa: BLE001 - every exception goes back to the caller, as Modal's do
            answer = ("error", exc)
        try:
            _write_frame(out, answer)
        except BrokenPipeError:
            return  # the caller is gone (a killed flow): its answer has nowhere to go


def _write_frame(fh: BinaryIO, payload: Any) -> int:
    data = pickle.dumps(payload)
    fh.write(struct.pack("<Q", len(data)) + data)
    fh.flush()
    return len(data)


def _read_frame(fh: BinaryIO) -> Any:
    head = fh.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    data = fh.read(n)
    if len(data) < n:
        return None
    return pickle.loads(data)


# ---------------------------------------------------------------------------
# The caller's side: Cls.from_name -> instance -> method.remote
# ---------------------------------------------------------------------------


# What a container imports to serve any request: the deployed classes' code and what its first
# shard loads (pyarrow imports pandas on its first table of Python objects). Not torch: a
# fine-tune's container imports that itself.
_WARM_IMPORTS = (
    "tests.standins.modal_cloud", "wikiembed.store_ops", "wikiembed.evaluate", "wikiembed.finetune", "wikiembed.backends.factory",
    "wikiembed.backends.tei", "wikiembed.publish", "wikiembed.search", "wikiembed.index", "wikiembed.fast_tokenizer", "pandas",
    "tokenizers", "blingfire",
)


class _Container:
    def __init__(self, cloud: CloudDir, number: int) -> None:
        self.private = cloud.path / "containers" / f"c{number:03d}"
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = warm_for(env, _WARM_IMPORTS).start("tests.standins.modal_cloud:main", ["--container", str(cloud.path), str(self.private),
                                                        cloud.volume_name], env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def call(self, request: Any) -> tuple[Any, int, int] | None:
        """(answer, bytes out, bytes in), or None if the container died."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            sent = _write_frame(self.proc.stdin, request)
        except BrokenPipeError:
            return None
        answer = _read_frame(self.proc.stdout)
        if answer is None:
            return None
        return answer, sent, len(pickle.dumps(answer))

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ModalCloud:
    """The containers of every deployed class, at most `max_containers` per class, least recently used first."""

    def __init__(self, cloud: CloudDir, backend_opts: dict[str, Any] | None = None, max_containers: int = 2) -> None:
        self.cloud = cloud
        if backend_opts is not None:
            cloud.configure(backend_opts, max_containers)
        self.max_containers = cloud.config()["max_containers"]
        self._idle: dict[str, list[_Container]] = {}
        self._count: dict[str, int] = {}
        self._numbers = 0
        self._cond = threading.Condition()
        self._all: list[_Container] = []
        self.rescheduled = 0

    def _acquire(self, cls: str) -> _Container:
        with self._cond:
            while True:
                idle = self._idle.setdefault(cls, [])
                if idle:
                    return idle.pop(0)
                if self._count.get(cls, 0) < self.max_containers:
                    self._count[cls] = self._count.get(cls, 0) + 1
                    self._numbers += 1
                    container = _Container(self.cloud, self._numbers)
                    self._all.append(container)
                    return container
                self._cond.wait()

    def _release(self, cls: str, container: _Container | None) -> None:
        with self._cond:
            if container is None:
                self._count[cls] -= 1  # a dead container frees its slot
            else:
                self._idle[cls].append(container)  # to the back: the next input goes to another one
            self._cond.notify_all()

    def call(self, cls: str, method: str, args: tuple) -> Any:
        for _ in range(4):
            container = self._acquire(cls)
            done = container.call((cls, method, args))
            if done is None:  # the container died: Modal starts a new one and reschedules the input
                container.stop()
                self._release(cls, None)
                self.rescheduled += 1
                continue
            self._release(cls, container)
            (status, value), sent, received = done
            with open(self.cloud.calls_file, "a") as fh:
                fh.write(json.dumps({"cls": cls, "method": method, "shard": args[2] if method == "run_shard" else None,
                                     "bytes_out": sent, "bytes_in": received}) + "\n")  # fmt: skip
            if status == "error":
                raise value
            return value
        import modal.exception

        raise modal.exception.InternalFailure(f"{cls}.{method}: containers kept crashing")

    def from_name(self, app_name: str, class_name: str, **_: Any) -> "_FakeCls":
        return _FakeCls(self, class_name)

    def dict_from_name(self, name: str, *, create_if_missing: bool = False, **_: Any) -> CloudDict:
        return CloudDict(self.cloud, name, create_if_missing)

    def stop(self) -> None:
        for container in self._all:
            container.stop()

    @contextlib.contextmanager
    def installed(self, monkeypatch: Any = None) -> Iterator["ModalCloud"]:
        import modal

        if monkeypatch is not None:
            monkeypatch.setattr(modal.Cls, "from_name", self.from_name)
            monkeypatch.setattr(modal.Dict, "from_name", self.dict_from_name)
        else:  # a driver process of its own
            modal.Cls.from_name = self.from_name
            modal.Dict.from_name = self.dict_from_name
        try:
            yield self
        finally:
            self.stop()


class _FakeCls:
    def __init__(self, cloud: ModalCloud, name: str) -> None:
        self.cloud, self.name = cloud, name

    def with_options(self, **_: Any) -> "_FakeCls":
        return self

    def __call__(self, **params: Any) -> "_FakeObj":
        if self.name in ("StoreOps", "Finetune") and params.get("volume") != self.cloud.cloud.volume_name:
            from wikiembed.errors import InputError

            raise InputError(f"store Volume {params.get('volume')!r} is not the one this app mounts")
        return _FakeObj(self.cloud, self.name)


class _FakeObj:
    def __init__(self, cloud: ModalCloud, name: str) -> None:
        self.cloud, self.name = cloud, name

    def __getattr__(self, method: str) -> Any:
        cloud, name = self.cloud, self.name

        class _Method:
            @staticmethod
            def remote(*args: Any) -> Any:
                return cloud.call(name, method, args)

        return _Method


def main(argv: list[str]) -> int:
    if argv[:1] == ["--container"]:
        cloud_dir, private, volume = argv[1:4]
        out = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)  # library prints go to stderr, never into the answers
        _serve(CloudDir(Path(cloud_dir), volume), Path(private), out, sys.stdin.buffer)
        return 0
    cloud_dir, rest = argv[0], argv[argv.index("--") + 1 :]
    from wikiembed.flows.cli import main as cli_main

    with ModalCloud(CloudDir(Path(cloud_dir))).installed():
        return cli_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
