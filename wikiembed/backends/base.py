"""The backend interface every backend implements, and the one check of what a backend returns.

A leaf module: backends import it, it imports none of them. The factory that
picks a backend (`factory.py`) sits above both.
"""

from __future__ import annotations

import threading
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from wikiembed.errors import BackendError


@runtime_checkable
class Backend(Protocol):
    """`embed(texts)` returns L2-normalized float32 vectors, shape `[len(texts), dim]`, in order."""

    model_id: str
    dim: int
    max_tokens: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def close(self) -> None: ...


# A backend that embeds pre-tokenized text (the local engine) also offers
# `embed_ids(ids, offsets) -> float32 [len(offsets) - 1, dim]`: row i's token ids,
# special tokens included, are `ids[offsets[i]:offsets[i + 1]]`. The token
# chunker's files carry such ids, so the local path tokenizes each character once.


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
    """A backend whose `embed` (and `embed_ids`, where the inner backend has it) calls run one at a time."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.model_id, self.dim, self.max_tokens = inner.model_id, inner.dim, inner.max_tokens
        self._lock = threading.Lock()
        if hasattr(inner, "embed_ids"):
            self.embed_ids = self._embed_ids

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return self.inner.embed(texts)

    def _embed_ids(self, ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        with self._lock:
            return self.inner.embed_ids(ids, offsets)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.inner.close()
