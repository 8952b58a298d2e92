"""Where a store lives, and what runs there: the one place `--store` is read for it.

`locate(spec)` answers once: a folder of this machine (`LocalFolder`) or `modal:VOLUME/PATH`, a
store on a Modal Volume (`OnVolume`). Shards run where the run's executor says
(`wikiembed.executors`, which checks its store with `check_executor`); every other operation of a
store is one of its location's methods, so the CLI, the flows and the tasks never ask which kind
of store they hold:

| operation | a local folder | a Modal Volume |
| --- | --- | --- |
| `open`, `open_for_reading` | `Store` (`Store.at`) | `VolumeStore`: each call in a `StoreOps` container |
| `publish` (export, upload) | `wikiembed.publish` here | in a `StoreOps` container, Volume to Hub or folder |
| `finetune`, `compare` | in this process | in the `wikiembed-finetune` app, next to the Volume |
| `check_*` | the paths and targets of this machine | every path on the store's Volume |

The improve loop on a Volume names each of its paths (the store, the pairs file, the model folder,
the new store) as `modal:VOLUME/PATH` on the store's own Volume, since the deployed apps mount only
that one; the fine-tune and the comparison take paths relative to the Volume's root, and their
answers come back with the containers' paths written as specs again, so reports name what the user
gave. Only control data travels: paths and settings out, records and figures back.

Touches: for a local store, nothing until an operation runs (then the store's files); for a Volume
store, Modal's API (through `wikiembed.backends.modal_client`), only when an operation runs.
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, ClassVar, ContextManager

from wikiembed.errors import InputError
from wikiembed.store import Store
from wikiembed.volume_store import DEFAULT_VOLUME, PREFIX, STORE_MOUNT, VolumeStore, cloud_target, parse_spec

if TYPE_CHECKING:
    from wikiembed.finetune import FinetuneSettings, Report
    from wikiembed.model import ModelInfo
    from wikiembed.records import Chunking, Manifest
    from wikiembed.evaluate import EvalResult
    from wikiembed.results import Published
    from wikiembed.settings import RunSettings


def locate(spec: str) -> "StoreLocation":
    """Where the store `--store spec` lives: `modal:VOLUME/PATH` on a Modal Volume, anything else a local folder."""
    parsed = parse_spec(spec)
    return LocalFolder(spec) if parsed is None else OnVolume(spec, *parsed)


class StoreLocation(ABC):
    """A store's place, with the operations that run there (see the module docstring)."""

    #: The store's files, and every path given with it, are on this machine.
    files_here: ClassVar[bool]

    def __init__(self, spec: str) -> None:
        self.spec = spec

    #: The Modal Volume the store is on (None: a local folder).
    volume: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    # -- the store itself ----------------------------------------------------------------------

    @abstractmethod
    def open(self, gen: str | None = None) -> "Store | VolumeStore":
        """The store (the generation `gen`; None: the one a run works on)."""

    @abstractmethod
    def open_for_reading(self) -> "Store | VolumeStore":
        """The store `status`, `export` and `upload` read: a local one at its published generation (or the
        generation a `STORE/gens/ID` path names: `Store.at`), a Volume one at the generation its view works on."""

    @abstractmethod
    def publish(self, target: str, **options: Any) -> "Published":
        """`wikiembed export` / `upload`: the done shards of the store to `target`; `options` are
        `wikiembed.publish.publish`'s."""

    @abstractmethod
    def published_manifest(self) -> "Manifest":
        """The manifest of the generation the store publishes (what the improve loop improves)."""

    # -- checks before any work ----------------------------------------------------------------

    @abstractmethod
    def check_executor(self, executor: Any) -> None:
        """Refuse an executor (its class or an instance) that cannot reach this store: one whose
        `data_here` is false runs shards where a Modal Volume is, one whose `data_here` is true here."""

    def check_run(self, settings: "RunSettings", info: "ModelInfo", chunking: "Chunking") -> None:
        """Before Prefect starts: a run's settings against what the store already holds (where it can be read)."""

    @abstractmethod
    def check_target(self, target: str | None, store: str | None = None) -> None:
        """Refuse, before any work, a publishing target this store (or the `store` it makes, beside it) could not
        publish to at the end of a run."""

    def check_vectors_here(self, command: str) -> None:
        """`search`, `index`, `eval` and `serve` read every vector on this machine: refuse a store whose vectors are elsewhere."""

    @abstractmethod
    def check_paths(self, pairs: str, out: str, new_store: str | None = None, *, flags: dict[str, str] | None = None) -> None:
        """The improve loop's paths (the pairs file, the model folder, the new store), checked to be where the loop
        runs (the store's place); neither the model folder nor the new store may be the store."""

    # -- the improve loop ----------------------------------------------------------------------

    @abstractmethod
    def finetune(self, pairs: str, out: str, settings: "FinetuneSettings", *, min_holdout: int = 1,
                 reporter: "Callable[[], ContextManager[Report]] | None" = None) -> Any:
        """Fine-tune the store's model on `pairs` into the folder `out`; return its record (`finetune.json`) with the
        paths as the user named them. Where it trains in this process, `reporter()` gives the context that takes its
        steps (default: stderr), and a split holding out fewer than `min_holdout` queries is refused before training."""

    @abstractmethod
    def model_for_runs(self, record_out: str, out: str) -> str:
        """The fine-tuned model (the folder `out`, recorded as `record_out`) as the shards of a run at this store load it."""

    @abstractmethod
    def compare(self, new_store: str, queries: str) -> "EvalResult":
        """`wikiembed eval --store THIS --against NEW --queries HELDOUT` (float32), recorded in neither card."""


class LocalFolder(StoreLocation):
    """A store in a folder of this machine: every operation runs in this process."""

    files_here = True

    def open(self, gen: str | None = None) -> Store:
        return Store(self.spec, gen)

    def open_for_reading(self) -> Store:
        return Store.at(self.spec)

    def publish(self, target: str, **options: Any) -> "Published":
        from wikiembed.publish import publish

        return publish(Store.at(self.spec).named, target, **options)

    def published_manifest(self) -> "Manifest":
        from wikiembed.search import StoreVectors

        return StoreVectors(self.spec).manifest

    def check_executor(self, executor: Any) -> None:
        if not executor.data_here:
            raise InputError(
                f"--backend {executor.name} with --store {self.spec!r}: Modal containers cannot see a local folder; "
                f"put the store on a Modal Volume, e.g. --store {PREFIX}{DEFAULT_VOLUME}/{self.spec.strip('/').split('/')[-1] or 'run'}."
            )

    def check_run(self, settings: "RunSettings", info: "ModelInfo", chunking: "Chunking") -> None:
        from wikiembed.plan import check_store

        check_store(settings, info, chunking)

    def check_target(self, target: str | None, store: str | None = None) -> None:
        from wikiembed.publish import check_target

        check_target(target, self.spec if store is None else store)

    def check_paths(self, pairs: str, out: str, new_store: str | None = None, *, flags: dict[str, str] | None = None) -> None:
        flags = {"pairs": "pairs", "out": "out", "new_store": "new_store", **(flags or {})}
        named = {"pairs": pairs, "out": out, **({"new_store": new_store} if new_store is not None else {})}
        for key, spec in named.items():
            if not locate(spec).files_here:
                raise InputError(
                    f"{flags[key]} {spec!r}: is on a Modal Volume, but the store {self.spec!r} is a local folder and the loop "
                    "runs where the store is; give a local path, or improve a store on that Volume (modal:VOLUME/PATH)."
                )
        for key in ("out", "new_store"):
            if key in named and Path(named[key]).expanduser().resolve() == Path(self.spec).expanduser().resolve():
                raise InputError(f"{flags[key]} {named[key]}: is the store being improved; give a new folder.")
        _check_pairs(pairs, flags["pairs"])
        if new_store is not None:
            _check_new_store(new_store, flags["new_store"])

    def finetune(self, pairs: str, out: str, settings: "FinetuneSettings", *, min_holdout: int = 1,
                 reporter: "Callable[[], ContextManager[Report]] | None" = None) -> Any:
        from wikiembed.finetune import finetune

        if reporter is None:
            return finetune(self.spec, pairs, out, settings, min_holdout=min_holdout)
        with reporter() as report:
            return finetune(self.spec, pairs, out, settings, min_holdout=min_holdout, report=report)

    def model_for_runs(self, record_out: str, out: str) -> str:
        return record_out

    def compare(self, new_store: str, queries: str) -> "EvalResult":
        from wikiembed.evaluate import compare_at_store

        return compare_at_store(self.spec, new_store, queries)


class OnVolume(StoreLocation):
    """A store on a Modal Volume: its operations run in containers that mount the Volume; this machine sends
    paths and settings, and gets records and figures back."""

    files_here = False

    def __init__(self, spec: str, volume: str, path: str) -> None:
        super().__init__(spec)
        self.volume = volume
        self.path = path  # on the Volume, as the spec names it
        self.root = path.strip("/")  # relative to the Volume's root

    def open(self, gen: str | None = None) -> VolumeStore:
        return VolumeStore(self.spec, gen)

    def open_for_reading(self) -> VolumeStore:
        return VolumeStore(self.spec)

    def publish(self, target: str, **options: Any) -> "Published":
        return VolumeStore(self.spec).publish(target, **options)

    def published_manifest(self) -> "Manifest":
        return VolumeStore(self.spec).read_manifest()

    def check_executor(self, executor: Any) -> None:
        if executor.data_here:
            raise InputError(f"--store {self.spec!r} is on a Modal Volume: use --backend modal, or a local --store folder.")

    def check_target(self, target: str | None, store: str | None = None) -> None:
        cloud_target(self.spec, target)  # a target the Volume cannot publish to fails now, not after the work

    def check_vectors_here(self, command: str) -> None:
        spec, name = self.spec, self.path.rstrip("/").split("/")[-1]
        raise InputError(
            f"wikiembed {command} --store {shlex.quote(spec)}: {command} reads the store's vectors on this machine, and this "
            f"store's stay on the Modal Volume {self.volume!r}. Copy its generation down first: "
            f"`modal volume get {shlex.quote(self.volume)} {shlex.quote(self.path + '/gens/GEN')} {shlex.quote('./' + name)}` (GEN: the "
            f"generation `wikiembed status --store {shlex.quote(spec)}` prints), then "
            f"`wikiembed {command} --store {shlex.quote('./' + name)}`."
        )

    def check_paths(self, pairs: str, out: str, new_store: str | None = None, *, flags: dict[str, str] | None = None) -> None:
        self._paths(pairs, out, new_store, flags=flags)

    def _paths(self, pairs: str, out: str, new_store: str | None = None, *, flags: dict[str, str] | None = None) -> dict[str, str]:
        """`check_paths`, answering each path relative to the Volume's root."""
        flags = {"pairs": "pairs", "out": "out", "new_store": "new_store", **(flags or {})}
        named = {"pairs": pairs, "out": out, **({"new_store": new_store} if new_store is not None else {})}
        examples = {"pairs": "feedback/pairs.jsonl", "out": "models/NAME", "new_store": f"{self.path}-NAME"}
        paths = {key: self._on_volume(flags[key], spec, examples[key]) for key, spec in named.items()}
        for key in ("out", "new_store"):
            if paths.get(key) == self.root:
                raise InputError(f"{flags[key]} {named[key]}: is the store being improved; give a new folder on the Volume.")
        return paths

    def _on_volume(self, flag: str, spec: str, example: str) -> str:
        """Where `spec` (modal:VOLUME/PATH) is on the store's Volume, relative to its root; refused, naming the fix,
        when it is a local path or on another Volume."""
        where = locate(spec) if spec.startswith(PREFIX) else None
        if not isinstance(where, OnVolume):
            fix = f"give modal:{self.volume}/{example}"
            if flag.endswith("pairs"):
                name = PurePosixPath(spec).name or "pairs.jsonl"
                fix = (f"put it there first with `modal volume put {shlex.quote(self.volume)} {shlex.quote(spec)} feedback/`, "
                       f"then give modal:{self.volume}/feedback/{name}")
            raise InputError(
                f"{flag} {spec!r}: the store is on the Modal Volume {self.volume!r} and the improve loop runs next to it, "
                f"where this machine's files are out of reach; {fix}."
            )
        if where.volume != self.volume:
            raise InputError(
                f"{flag} {spec!r}: is on the Volume {where.volume!r}, but the store is on {self.volume!r} and the deployed apps "
                f"mount only that one; give modal:{self.volume}/{example}."
            )
        return where.root

    def _as_spec(self, path: Any) -> Any:
        """A path as a container sees it (under the mount) written as the user names it (modal:VOLUME/PATH)."""
        if isinstance(path, str) and path.startswith(STORE_MOUNT + "/"):
            return f"{PREFIX}{self.volume}/{path[len(STORE_MOUNT) + 1:]}"
        return path

    def finetune(self, pairs: str, out: str, settings: "FinetuneSettings", *, min_holdout: int = 1,
                 reporter: "Callable[[], ContextManager[Report]] | None" = None) -> Any:
        """In the `wikiembed-finetune` app, next to the Volume: the model folder is written there (its steps go to
        the container's log; the caller checks the held-out share of the record)."""
        from wikiembed.backends.modal_client import FinetuneApp  # lazy: a local store needs no Modal
        from wikiembed.results import FinetuneRecord

        paths = self._paths(pairs, out, flags={"pairs": "--pairs", "out": "--out"})
        assert self.volume is not None
        record = FinetuneApp(self.volume).run(self.root, paths["pairs"], paths["out"], settings.model_dump())
        return FinetuneRecord.from_json({**record, **{key: self._as_spec(record[key]) for key in ("out", "store", "pairs_file")}})

    def model_for_runs(self, record_out: str, out: str) -> str:
        # The shard containers load the model from its folder under their mount.
        return f"{STORE_MOUNT}/{parse_spec(out)[1].strip('/')}"  # type: ignore[index]

    def compare(self, new_store: str, queries: str) -> "EvalResult":
        """In the `wikiembed-finetune` app; every argument is a `modal:VOLUME/PATH` on one Volume. The figures come
        back with the stores and models as specs."""
        from wikiembed.backends.modal_client import FinetuneApp  # lazy: a local store needs no Modal
        from wikiembed.evaluate import EvalResult

        assert self.volume is not None
        paths = [self.root, self._on_volume("new_store", new_store, ""), self._on_volume("queries", queries, "")]
        result = EvalResult.from_json(FinetuneApp(self.volume).compare(*paths))
        against = result.against
        assert against is not None
        return result.replace(store=self._as_spec(result.store), model=self._as_spec(result.model),
                              queries_file=self._as_spec(result.queries_file),
                              against=against.replace(store=self._as_spec(against.store), model=self._as_spec(against.model)))


def _check_pairs(pairs: str, flag: str) -> None:
    """A local pairs file must be there before anything is read or trained: a deployment's form offers a default
    path that a fresh clone does not hold, and a relative path is read from the working folder (a worker's: the
    clone `prefect deploy` ran in), which the form does not show."""
    path = Path(pairs).expanduser()
    if path.is_file():
        return
    what = "is a folder, not a file" if path.is_dir() else "no such file"
    where = "" if path.is_absolute() else f" (a relative path is read from the working folder, here {Path.cwd()})"
    raise InputError(
        f"{flag} {pairs}: {what}{where}; give the judged queries: the file `wikiembed serve --feedback` appends to, or a "
        ".jsonl or .parquet file of {\"query\": ..., \"id\": ...} rows (docs/IMPROVE.md), as an absolute path or one "
        "relative to that folder."
    )


def _check_new_store(new_store: str, flag: str) -> None:
    """The new store is a new or empty folder, or a store a stopped round left (the same round resumes it): never a
    folder of someone else's files, which the re-embed would write its store into."""
    path = Path(new_store).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {new_store}: is a file; give a new folder for the re-embedded store.")
    if not path.is_dir() or (path / "gens").is_dir() or (path / "current").is_symlink() or (path / "manifest.json").is_file():
        return
    own = sorted(p.name for p in path.iterdir() if p.name != ".lock")
    if own:
        shown = ", ".join(own[:5]) + (f" and {len(own) - 5} more" if len(own) > 5 else "")
        raise InputError(
            f"{flag} {new_store}: a folder holding files of its own ({shown}), neither empty nor a wikiembed store; give a "
            "new folder for the re-embedded store (one per round: the same one resumes a round that stopped). Nothing was "
            "changed there."
        )
