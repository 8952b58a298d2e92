"""The executor interface: what the flows ask of whatever runs a run's shards.

The flow owns the order of steps, retries, markers-as-truth and the UI; an executor owns
where each step runs. Its operations, in the order a run calls them:

1. `check()`: before the store is touched, refuse what this executor cannot run (a store it
   cannot reach, a model it cannot load);
2. `store(spec, gen)`: the flow's view of the store (`StoreView`: manifest, shard states,
   failures, the run lock);
3. `prepare()`: the download step: snapshot the source and fix the shard plan (`Planned`);
4. `check_backend(model)`: before the first shard, open the backend once, so a wrong URL or a
   missing model fails the run in seconds rather than once per shard;
5. `calibrate(root, gen)`: a generation's int8 ranges, before any shard is embedded;
6. `run_shard(job)`: one whole shard, chunk to marker, in the flow's embed task; returns the marker;
7. `export(root, gen, upload_to)`: card, promotion of the generation, upload;
8. `end_run(root, reuse_gen)`: let go of what the run held (worker processes, reuse indexes).

A rerun calls `prepare_rerun(store, manifest, shards)` instead of 3, and gets the generation
whose vectors its shards may reuse.

An executor holds only the run's settings (it is handed to task runs), and opens what it
needs in the process that needs it.

What the rest of the code needs to know about an executor before any run (the CLI's `run` checks,
`wikiembed estimate`, the model checks of `wikiembed.plan`) are its class's attributes and class
methods (`data_here`, `price_list`, `rate_from_store`, `runs_in_containers`, `remote_code_refusal`,
`rate_hardware`, `check_model`), so that a new executor is one new module: nothing elsewhere
branches on its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, ContextManager, Protocol

from wikiembed import reuse_index
from wikiembed.backends.factory import BackendOptions
from wikiembed.errors import BackendError, InputError, TransientBackendError, WikiembedError
from wikiembed.model import WAY_OUT
from wikiembed.records import Manifest, Marker, VectorKind
from wikiembed.store_results import Planned  # noqa: F401 (the download step's answer: importable from here)
from wikiembed.store_location import locate

if TYPE_CHECKING:
    from wikiembed.compact import Int8Calibration
    from wikiembed.model import ModelInfo
    from wikiembed.results import Exported
    from wikiembed.settings import ComputeOptions, RunSettings
    from wikiembed.store_parts import ShardState

# Shards in flight at once when the settings do not say; see each executor's `default_concurrency`.
MAX_CONCURRENCY = 100


class StoreView(Protocol):
    """What the flow reads and writes of a store, wherever it is."""

    root: Any
    gen: str | None

    def exists(self) -> bool: ...
    def read_manifest(self) -> Manifest: ...
    def states(self, manifest: Manifest | None = None) -> "list[ShardState]": ...
    def mark_failed(self, shard: int, error: str, attempts: int) -> None: ...
    def forget(self, shard: int) -> None: ...
    def lock(self, wait_s: float = 0.0) -> ContextManager[Any]: ...


@dataclass(frozen=True)
class ShardJob:
    """One shard of one generation, as the embed task hands it to the executor."""

    root: str
    gen: str
    shard: int
    model: str  # the generation's model id (its manifest's)
    reuse_gen: str | None = None  # the published generation whose vectors unchanged chunks take


class Executor(ABC):
    """Runs a run's steps somewhere; see the module docstring for the order of calls."""

    #: The name `--backend` selects this executor by.
    name: ClassVar[str]
    #: The store's snapshot and vectors are on this machine: the run's estimate, eval sample and
    #: index are made here. False: they stay where the store is (a Modal Volume).
    data_here: ClassVar[bool] = True
    #: The provider whose list prices (`wikiembed/data/prices.toml`) bill the hardware the shards run on;
    #: None: hardware already paid for (this machine, self-hosted servers).
    price_list: ClassVar[str | None] = None
    #: Every shard runs on one machine or one set of servers, so the busy time of a store's done shards is
    #: the run's time and their markers give its rate (not so for shards spread over many containers).
    rate_from_store: ClassVar[bool] = False
    #: Shards run in containers started for the run: a rate leaves out their start-up and idle time, and
    #: is one container's.
    runs_in_containers: ClassVar[bool] = False
    #: Why a model's own code (`auto_map`) never runs where the shards are embedded, as a refusal says
    #: it; None: it runs there when the run trusts it (`--trust-remote-code`).
    remote_code_refusal: ClassVar[str | None] = None
    #: What a refusal of a model's parts suggests instead.
    unsupported_model_way_out: ClassVar[str] = WAY_OUT

    def __init__(self, settings: "RunSettings") -> None:
        self.settings = settings
        c = settings.compute
        self.backend = BackendOptions(
            backend=settings.backend,
            device=None if c.device == "auto" else c.device,
            tei_url=tuple(c.tei_url),
            modal_app=c.modal_app,
            modal_class=c.modal_class,
            gpu=c.gpu,
            trust_remote_code=settings.trust_remote_code,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(store={self.settings.store!r})"

    # -- before anything is written ------------------------------------------------------------

    def check(self) -> None:
        """Refuse, before the store is touched, settings this executor cannot run."""
        locate(self.settings.store).check_executor(self)

    @classmethod
    def check_model(cls, info: "ModelInfo", trust_remote_code: bool) -> None:
        """Refuse, before anything is written, a model whose vectors this executor cannot make exactly as
        sentence-transformers does."""
        info.check_supported(trust_remote_code, remote_code_refusal=cls.remote_code_refusal, way_out=cls.unsupported_model_way_out)

    @classmethod
    def rate_hardware(cls, compute: "ComputeOptions") -> str | None:
        """The hardware a run's rate is looked up for (`wikiembed.rates`): by default the GPU the settings name."""
        return compute.gpu.upper() if compute.gpu else None

    @abstractmethod
    def store(self, spec: str, gen: str | None = None) -> StoreView:
        """The flow's view of the store at `spec` (the generation `gen`; None: the one to work on)."""

    @abstractmethod
    def prepare(self) -> Planned:
        """The download step: snapshot the source and write the shard plan if they are new."""

    def check_backend(self, model: str) -> None:
        """Before the first shard: open the backend once. By default it runs in this process."""
        self.open_backend_here(model)

    def request_retries(self, model: str) -> int:
        """Requests the backends of this process have retried so far for `model`."""
        return self.backend.retries(model)

    # -- the shards ----------------------------------------------------------------------------

    @abstractmethod
    def calibrate(self, root: str, gen: str) -> "Int8Calibration | None":
        """Record the generation's int8 ranges if it stores int8 and has none yet; return them."""

    @abstractmethod
    def run_shard(self, job: ShardJob) -> Marker:
        """Chunk, embed and checkpoint one shard; return its marker. Runs inside the flow's embed
        task (retried there); reports chunks to `wikiembed.progress.Progress.current()`."""

    def pin_kind(self, store: StoreView, kind: VectorKind | None = None) -> None:
        """Record the generation's kind of vectors in its manifest (`kind`, that of the run's first
        finished shard, or else its markers'), where this machine can write it (else the export step
        does, where the store is; the flow checks every shard's kind against the first meanwhile)."""

    @abstractmethod
    def prepare_rerun(self, store: StoreView, manifest: Manifest, shards: list[int]) -> str | None:
        """Everything a rerun of `shards` needs, checked before it starts; return the generation
        whose vectors the shards may reuse."""

    # -- after the shards ----------------------------------------------------------------------

    @abstractmethod
    def export(self, root: str, gen: str, upload_to: str | None) -> "Exported":
        """Card, then promotion of `gen` to the published generation, then the upload if asked."""

    def end_run(self, root: str, reuse_gen: str | None) -> None:
        """At the end of a run: let go of what it held in this process."""
        if reuse_gen:
            reuse_index.release(root, reuse_gen)

    # -- what the flow reports -----------------------------------------------------------------

    def concurrency(self) -> int:
        """Shards in flight at once."""
        return min(self.settings.compute.concurrency or self.default_concurrency(), MAX_CONCURRENCY)

    def default_concurrency(self) -> int:
        return 2

    def device(self, model: str, embedded: bool) -> str | None:
        """Where the run's vectors were computed, in words (None: nowhere, this run embedded nothing)."""
        return self.name

    def tokenizer_choice(self) -> str:
        """The token chunker's tokenizer choice where this executor chunks (`--tokenizer`)."""
        return self.settings.compute.tokenizer

    def timing_engine(self, model: str) -> Any:
        """An engine of this process the run's estimate may time on its sample's chunks (a rate of this very
        machine), or None: the estimate then takes a store-measured or recorded rate."""
        return None

    # -- helpers for executors that embed on this machine --------------------------------------

    def open_backend_here(self, model: str) -> Any:
        """Open this run's backend in this process; its failure as one error that names the fix."""
        try:
            return self.backend.open(model)
        except TransientBackendError as exc:  # already retried inside the backend
            raise BackendError(f"the {self.settings.backend} backend could not be opened: {exc}") from exc
        except WikiembedError:
            raise
        except Exception as exc:  # noqa: BLE001 - a model folder a loader chokes on (truncated weights, bad files)
            cause = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            raise InputError(
                f"model {model!r} could not be loaded by the {self.settings.backend} backend ({cause}); its files are damaged "
                "or incomplete (a copy or download cut short leaves truncated weights): copy or download it again, "
                "or point --model at a complete model folder. Nothing was written to the store."
            ) from exc
