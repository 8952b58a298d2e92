"""Pick and open a backend: `local` (the PyTorch engine) or `tei` (servers by URL).

An executor that embeds nothing in this process opens nothing here: the Modal one sends whole shards to a
deployed app, which opens its own backend (TEI or the engine) next to the store's Volume; its
`check_backend` and `request_retries` say so (`wikiembed.executors.modal_containers`).

Sits above the backends and the interface they share (`base.py`); the flow only
ever calls `open_backend(...)` and then `embed(texts)`.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Sequence

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
    if backend == "local":
        from wikiembed.backends.engine import TorchEngine

        # One engine already uses every core (or the whole GPU): shard tasks
        # take turns on it instead of oversubscribing it.
        return Serialized(TorchEngine(model, device, trust_remote_code=trust_remote_code))
    if backend == "tei":
        if not tei_url:
            raise BackendError("--backend tei needs --tei-url URL[,URL...] (the TEI servers to call).")
        from wikiembed.backends.tei import TEIBackend

        return TEIBackend(list(tei_url), model_id=model, revision=revision, clients=clients)
    raise BackendError(
        f"--backend {backend!r} embeds no texts in this process (whole shards go where its executor runs them); "
        "the backends opened here are local (the PyTorch engine) and tei (servers by URL)."
    )


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
