"""The embed step: one small backend interface, and the factory that picks a backend.

Backends (`local` PyTorch engine, `tei` servers by URL, a deployed `modal`
app) all implement `Backend`; the flow only ever calls `embed(texts)`.
This module holds no model code itself: it imports the backend it is asked for.
"""

from __future__ import annotations

import threading
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from tasks.errors import BackendError


@runtime_checkable
class Backend(Protocol):
    """`embed(texts)` returns L2-normalized float32 vectors, shape `[len(texts), dim]`, in order."""

    model_id: str
    dim: int
    max_tokens: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def close(self) -> None: ...


def check_vectors(vectors: np.ndarray, n: int, dim: int, where: str) -> np.ndarray:
    """Validate a backend's answer: count, dimension and finiteness; return float32 C-contiguous."""
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != n or (dim and arr.shape[1] != dim):
        raise BackendError(
            f"{where} returned vectors of shape {arr.shape}, expected ({n}, {dim}); "
            "check that the backend serves the model this store was built with."
        )
    if not np.isfinite(arr).all():
        raise BackendError(
            f"{where} returned non-finite values (NaN/inf); try --device cpu or fp32 to rule out overflow."
        )
    return arr


class Serialized:
    """A backend whose `embed` calls run one at a time (for in-process engines)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.model_id, self.dim, self.max_tokens = inner.model_id, inner.dim, inner.max_tokens
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return self.inner.embed(texts)

    def close(self) -> None:
        self.inner.close()


_BACKENDS: dict[tuple, Backend] = {}
_BACKENDS_LOCK = threading.Lock()


def open_backend(
    backend: str,
    model: str,
    *,
    device: str | None = None,
    tei_url: Sequence[str] = (),
    modal_app: str | None = None,
    modal_class: str = "TEI",
    gpu: str | None = None,
) -> Backend:
    """The backend for these settings, opened once per process and shared by all shard tasks.

    Loading a model costs seconds; Prefect runs shard tasks as threads of one
    process, so they share one engine (and one TEI connection pool) instead of
    each loading their own. Inputs are plain values so task inputs stay hashable.
    """
    key = (backend, model, device, tuple(tei_url), modal_app, modal_class, gpu)
    with _BACKENDS_LOCK:
        if key in _BACKENDS:
            return _BACKENDS[key]
        if backend == "local":
            from modal_workers.engine import TorchEngine

            # One engine already uses every core (or the whole GPU): shard tasks
            # take turns on it instead of oversubscribing it.
            opened: Backend = Serialized(TorchEngine(model, device))
        elif backend == "tei":
            if not tei_url:
                raise BackendError("--backend tei needs --tei-url URL[,URL...] (the TEI servers to call).")
            from modal_workers.tei_client import TEIBackend

            opened = TEIBackend(list(tei_url), model_id=model)
        elif backend == "modal":
            from modal_workers.modal_client import ModalBackend

            opened = ModalBackend(modal_app, modal_class, model_id=model, gpu=gpu)
        else:
            raise BackendError(f"--backend {backend!r}: use local, tei or modal.")
        _BACKENDS[key] = opened
        return opened


def close_backends() -> None:
    """Close every open backend (end of process, or tests that need a fresh engine)."""
    with _BACKENDS_LOCK:
        for backend in _BACKENDS.values():
            backend.close()
        _BACKENDS.clear()
