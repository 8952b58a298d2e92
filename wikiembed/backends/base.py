"""The backend interface every backend implements, what kind of vectors it makes, and the one
check of what a backend returns.

A leaf module: backends import it, it imports none of them. The factory that
picks a backend (`factory.py`) sits above both.
"""

from __future__ import annotations

import threading
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from wikiembed.errors import BackendError
from wikiembed.records import VectorKind  # noqa: F401 - part of the backend interface


@runtime_checkable
class Backend(Protocol):
    """`embed(texts, prompt)` returns float32 vectors, shape `[len(texts), dim]`, in input order, of
    each text with `prompt` put before it (the model's document or query prompt); `kind`
    says what they are (normalized or not: they are L2-normalized where the model says so, and TEI
    always normalizes). Backends that retry requests themselves count them in `retries`. What is
    written is checked once, in `wikiembed.embedding`.
    """

    model_id: str
    dim: int
    max_tokens: int
    kind: VectorKind

    def embed(self, texts: Sequence[str], prompt: str = "") -> np.ndarray: ...

    def close(self) -> None: ...


# A backend that embeds pre-tokenized text (the local engine) also offers
# `embed_ids(ids, offsets, prompt) -> float32 [len(offsets) - 1, dim]`: row i's token ids,
# special tokens and the prompt's tokens included, are `ids[offsets[i]:offsets[i + 1]]`. The
# token chunker's files carry such ids, so the local path tokenizes each character once.


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
        self.kind = inner.kind
        self.device: str | None = getattr(inner, "device", None)  # what the run summary reports
        self._lock = threading.Lock()
        if hasattr(inner, "embed_ids"):
            self.embed_ids = self._embed_ids

    def embed(self, texts: Sequence[str], prompt: str = "") -> np.ndarray:
        with self._lock:
            return self.inner.embed(texts, prompt)

    def _embed_ids(self, ids: np.ndarray, offsets: np.ndarray, prompt: str = "") -> np.ndarray:
        with self._lock:
            return self.inner.embed_ids(ids, offsets, prompt)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.inner.close()
