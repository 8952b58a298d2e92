"""Pick and open a backend: `local` (the PyTorch engine) or `tei` (servers by URL), by name from `OPENERS`.

An executor that embeds nothing in this process opens nothing here: the Modal one sends whole shards to a
deployed app, which opens its own backend (TEI or the engine) next to the store's Volume; its
`check_backend` and `request_retries` say so (`wikiembed.executors.modal_containers`).

Sits above the backends and the interface they share (`base.py`); the flow only
ever calls `open_backend(...)` and then `embed(texts)`. Another backend opened in this process is one
entry of `OPENERS`: its name, what it is in words, and the function that opens it.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from wikiembed.backends.base import Backend, Serialized
from wikiembed.errors import BackendError
from wikiembed.model import model_info



@dataclass(frozen=True)
class BackendOptions:
    """How a run reaches its backend: the run settings' backend fields, typed, in one value that
    pickles to worker processes. `open(model)` gives the process's shared backend for them."""

    backend: str = "local"
    device: str | None = None  # None: the engine picks cuda when present
    tei_url: tuple[str, ...] = ()
    modal_app: str | None = None
    modal_class: str = "TEI"
    gpu: str | None = None
    trust_remote_code: bool = False

    def open(self, model: str, *, clients: int = 1) -> Backend:
        return open_backend(model=model, clients=clients, **asdict(self))

    def retries(self, model: str) -> int:
        """Requests the backend open in this process for `model` has retried so far (see `backend_retries`)."""
        return backend_retries(model=model, **asdict(self))


_BACKENDS: dict[tuple, Backend] = {}
_BACKENDS_LOCK = threading.Lock()
_OPENING: dict[tuple, threading.Lock] = {}


def _key(backend: str, model: str, device: str | None, tei_url: Sequence[str], modal_app: str | None,
         modal_class: str, gpu: str | None, clients: int = 1, trust_remote_code: bool = False) -> tuple:
    # The model's revision is part of the key: a model folder whose files changed
    # (a fine-tune saved over it) opens a new backend.
    return (backend, model, model_info(model).revision, device, tuple(tei_url), modal_app, modal_class, gpu, clients, trust_remote_code)


def open_backend(
    backend: str,
    model: str,
    *,
    device: str | None = None,
    tei_url: Sequence[str] = (),
    modal_app: str | None = None,
    modal_class: str = "TEI",
    gpu: str | None = None,
    clients: int = 1,
    trust_remote_code: bool = False,
) -> Backend:
    """The backend for these settings, opened once per process and shared by all shard tasks.

    Loading a model costs seconds; Prefect runs shard tasks as threads of one
    process, so they share one engine (and one TEI connection pool) instead of
    each loading their own. Inputs are plain values so task inputs stay hashable.
    `clients`: processes that each open this backend at once (`wikiembed.shard_workers`);
    a TEI client then takes that share of its servers' permits.
    """
    key = _key(backend, model, device, tei_url, modal_app, modal_class, gpu, clients, trust_remote_code)
    revision = key[2]
    with _BACKENDS_LOCK:
        if key in _BACKENDS:
            return _BACKENDS[key]
        opening = _OPENING.setdefault(key, threading.Lock())
    # One lock per backend, not one for all: opening one backend (model load, TEI /info with
    # retries) never holds up another, and the threads that want this one wait for one open.
    with opening:
        if key in _BACKENDS:
            return _BACKENDS[key]
        opened = _open(backend, model, revision, device, tei_url, modal_app, modal_class, gpu, clients, trust_remote_code)
        with _BACKENDS_LOCK:
            _BACKENDS[key] = opened
        return opened


def release(backend: Backend) -> None:
    """Forget an opened backend, so that it is freed once its last user lets go (a long-running search
    service that moved on to another generation's model does not keep every earlier model loaded)."""
    with _BACKENDS_LOCK:
        for key in [k for k, v in _BACKENDS.items() if v is backend]:
            del _BACKENDS[key]
            _OPENING.pop(key, None)


@dataclass(frozen=True)
class OpenRequest:
    """What an opener is given: the model (at its revision) and the run's backend fields."""

    model: str
    revision: str
    device: str | None
    tei_url: tuple[str, ...]
    modal_app: str | None
    modal_class: str
    gpu: str | None
    clients: int
    trust_remote_code: bool


def _open_local(request: OpenRequest) -> Backend:
    from wikiembed.backends.engine import TorchEngine

    # One engine already uses every core (or the whole GPU): shard tasks
    # take turns on it instead of oversubscribing it.
    return Serialized(TorchEngine(request.model, request.device, trust_remote_code=request.trust_remote_code))


def _open_tei(request: OpenRequest) -> Backend:
    if not request.tei_url:
        raise BackendError("--backend tei needs --tei-url URL[,URL...] (the TEI servers to call).")
    from wikiembed.backends.tei import TEIBackend

    return TEIBackend(list(request.tei_url), model_id=request.model, revision=request.revision, clients=request.clients)


@dataclass(frozen=True)
class Opener:
    """How `--backend NAME` is opened in this process: what it is, in words, and the function that opens it."""

    what: str
    open: Callable[[OpenRequest], Backend]


# The backends this process opens, by `--backend` name (another executor's backend, such as Modal's, is opened
# where that executor runs its shards).
OPENERS: dict[str, Opener] = {
    "local": Opener("the PyTorch engine", _open_local),
    "tei": Opener("servers by URL", _open_tei),
}


def _opened_here() -> str:
    """The backends of `OPENERS` in words: `local (the PyTorch engine) and tei (servers by URL)`."""
    named = [f"{name} ({opener.what})" for name, opener in OPENERS.items()]
    return " and ".join([", ".join(named[:-1]), named[-1]] if len(named) > 1 else named)


def _open(
    backend: str,
    model: str,
    revision: str,
    device: str | None,
    tei_url: Sequence[str],
    modal_app: str | None,
    modal_class: str,
    gpu: str | None,
    clients: int,
    trust_remote_code: bool = False,
) -> Backend:
    opener = OPENERS.get(backend)
    if opener is None:
        raise BackendError(
            f"--backend {backend!r} embeds no texts in this process (whole shards go where its executor runs them); "
            f"the backends opened here are {_opened_here()}."
        )
    return opener.open(OpenRequest(model, revision, device, tuple(tei_url), modal_app, modal_class, gpu, clients,
                                   trust_remote_code))


def backend_retries(
    backend: str,
    model: str,
    *,
    device: str | None = None,
    tei_url: Sequence[str] = (),
    modal_app: str | None = None,
    modal_class: str = "TEI",
    gpu: str | None = None,
    trust_remote_code: bool = False,
) -> int:
    """Requests the open backend for these settings has retried so far; 0 when none is open here
    (nothing was embedded in this process) or the backend does not retry on its own."""
    key = _key(backend, model, device, tei_url, modal_app, modal_class, gpu, trust_remote_code=trust_remote_code)
    with _BACKENDS_LOCK:
        opened = _BACKENDS.get(key)
    return int(getattr(opened, "retries", 0)) if opened is not None else 0
