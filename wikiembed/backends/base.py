"""The backend interface every backend implements, what kind of vectors it makes, and the one
check of what a backend returns.

A leaf module: backends import it, it imports none of them. The factory that
picks a backend (`factory.py`) sits above both.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from wikiembed.errors import BackendError


@dataclass(frozen=True)
class VectorKind:
    """What produced a set of vectors, recorded with every shard.

    Vectors are interchangeable (may share a store, may be reused for unchanged
    text) when model, revision and everything that shapes them agree: pooling,
    whether pooling sees the prompt, Dense layers, normalization, truncation and
    the prompt put before each text. The backend and compute dtype are recorded
    for provenance only, as they move a vector by float rounding, not in kind.
    Records written before a field existed read it as its default (what the
    engine did then: no prompt, no Dense, no truncation).
    """

    backend: str  # local | tei | modal
    model: str
    revision: str
    pooling: str  # sentence-transformers mode(s): mean, cls, max, ..., "+"-joined when concatenated
    normalize: bool  # whether vectors are L2-normalized
    dtype: str  # compute dtype (float32, bfloat16, ...) or "unknown" where the server does not say
    prompt: str = ""  # the text put before every document
    include_prompt: bool = True  # whether pooling saw the prompt's tokens
    dense: tuple[str, ...] = ()  # each Dense layer as "in->out Activation"
    truncate_dim: int | None = None

    @classmethod
    def of_model(cls, info: Any, backend: str, dtype: str, prompt: str = "") -> "VectorKind":
        """The kind of vectors a backend makes from a model (a `wikiembed.model.ModelInfo`)."""
        return cls(
            backend, info.model_id, info.revision, info.pooling, info.normalize, dtype, prompt,
            info.include_prompt, tuple(layer.describe() for layer in info.dense), info.truncate_dim,
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dense"] = list(self.dense)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VectorKind":
        values = {name: data[name] for name in cls.__dataclass_fields__ if data.get(name) is not None}
        values["dense"] = tuple(values.get("dense", ()))
        for name in ("backend", "model", "revision", "pooling", "normalize", "dtype"):
            values.setdefault(name, None)
        return cls(**values)  # type: ignore[arg-type]

    def with_prompt(self, prompt: str) -> "VectorKind":
        return replace(self, prompt=prompt)

    def _shape(self) -> tuple:
        return (self.model, self.revision, self.pooling, self.normalize, self.prompt, self.include_prompt, self.dense, self.truncate_dim)

    def agrees_with(self, other: "VectorKind") -> bool:
        return self._shape() == other._shape()

    def describe(self) -> str:
        norm = "L2-normalized" if self.normalize else "not normalized"
        parts = [f"{self.backend} backend", f"{self.model} at {self.revision}", f"{self.pooling} pooling"]
        if not self.include_prompt:
            parts.append("prompt left out of pooling")
        parts += [f"Dense {layer}" for layer in self.dense]
        parts.append(norm)
        if self.truncate_dim:
            parts.append(f"cut to {self.truncate_dim} dimensions")
        parts.append(f"prompt {self.prompt!r}" if self.prompt else "no prompt")
        parts.append(self.dtype)
        return ", ".join(parts)


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
