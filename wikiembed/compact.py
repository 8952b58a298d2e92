"""Compact vector forms: Matryoshka truncation and float16 / int8 / binary precision.

A run may ask for extra forms of every vector (`--dimensions 384,128 --precision float16,int8,binary`:
each precision at each number of dimensions); they are derived from the float32 vector at checkpoint
time, so nothing is embedded twice, and stored as extra columns next to `embedding`:

| form | column | stored as | bytes per vector (dim d) |
| --- | --- | --- | --- |
| float32 at d < full | `embedding_{d}_float32` | float32 | 4·d |
| float16 | `embedding_float16` (or `embedding_{d}_float16`) | float16 | 2·d |
| int8 | `embedding_int8` (...) | int8, per-dimension ranges | d |
| binary | `embedding_binary` (...) | sign bits packed 8 per uint8, big-endian bit order | d / 8 |

Truncation keeps the first d dimensions and renormalizes them to unit length (Matryoshka models are
trained for that; other models lose more). int8 maps each dimension's calibration range [min, max]
onto 256 steps: `code = round((x - min) / step) - 128`, `x ≈ (code + 128) · step + min`, with
`step = (max - min) / 255`; the ranges come from a fixed calibration sample of the store's own
vectors and are recorded in the manifest and the dataset card, so every shard uses the same ones.

Scoring each form against a float32 query (used by search and eval): float forms by dot product;
int8 by the query against the dequantized vectors; binary by Hamming distance between sign bits,
optionally followed by rescoring the best candidates with the float query against the ±1 vectors.

Touches: nothing (numpy and pyarrow values only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from wikiembed.errors import InputError, StoreError
from wikiembed.records import Manifest
from wikiembed.results import JsonRecord

PRECISIONS = ("float32", "float16", "int8", "binary")
_ARROW = {"float32": pa.float32(), "float16": pa.float16(), "int8": pa.int8(), "binary": pa.uint8()}
_NUMPY = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "binary": np.uint8}
# Chunks whose vectors set the int8 ranges: enough that each dimension's min and max are
# stable (a few values clip beyond them, which only costs those values a little precision),
# few enough to embed in seconds on a CPU.
CALIBRATION_CHUNKS = 256


@dataclass(frozen=True)
class Form:
    """One stored form of the vectors: a precision at a number of dimensions."""

    precision: str
    dim: int
    full_dim: int

    @property
    def name(self) -> str:
        """What users type (`--form`): `int8`, or `int8@128` when truncated."""
        return self.precision if self.dim == self.full_dim else f"{self.precision}@{self.dim}"

    @property
    def column(self) -> str:
        if self.dim == self.full_dim:
            return "embedding" if self.precision == "float32" else f"embedding_{self.precision}"
        return f"embedding_{self.dim}_{self.precision}"

    @property
    def width(self) -> int:
        """Values stored per vector (bytes for binary)."""
        return self.dim // 8 if self.precision == "binary" else self.dim

    @property
    def bytes_per_vector(self) -> int:
        return self.width * np.dtype(_NUMPY[self.precision]).itemsize

    @property
    def arrow_type(self) -> pa.DataType:
        return pa.list_(_ARROW[self.precision], self.width)


@dataclass(frozen=True)
class CompactSpec:
    """The extra forms a run writes: each precision at each number of dimensions."""

    dimensions: tuple[int, ...] = ()  # empty: the model's full dimension only
    precisions: tuple[str, ...] = ()  # empty: float32 only

    def dims(self, full_dim: int) -> tuple[int, ...]:
        return self.dimensions or (full_dim,)

    def forms(self, full_dim: int) -> list[Form]:
        """Every extra column's form, in a fixed order (the canonical float32 `embedding` excluded)."""
        precisions = self.precisions or ("float32",)
        every = [Form(p, d, full_dim) for d in self.dims(full_dim) for p in PRECISIONS if p in precisions]
        return [f for f in every if f.column != "embedding"]

    def as_dict(self) -> dict[str, Any]:
        return {"dimensions": list(self.dimensions), "precisions": list(self.precisions)}


def _int_list(value: int | str | Sequence[int] | None, flag: str) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        return [int(str(v).strip()) for v in parts if str(v).strip()]
    except ValueError:
        raise InputError(f"{flag} {value!r}: give whole numbers, comma-separated, e.g. {flag} 384,128.") from None


def parse_compact(
    dimensions: int | str | Sequence[int] | None, precision: str | Sequence[str] | None, full_dim: int
) -> CompactSpec | None:
    """Validate `--dimensions` / `--precision` against the model; None when no extra form is asked for."""
    if isinstance(precision, str):
        precision = [p.strip() for p in precision.split(",") if p.strip()]
    bad = [p for p in precision or () if p not in PRECISIONS]
    if bad:
        raise InputError(f"--precision {','.join(bad)}: choose from {','.join(PRECISIONS)} (comma-separated).")
    precisions = tuple(p for p in PRECISIONS if p in (precision or ()))  # one order, whatever order was typed
    dims = sorted(set(_int_list(dimensions, "--dimensions")), reverse=True)
    for d in dims:
        if not 8 <= d <= full_dim or d % 8:
            raise InputError(f"--dimensions {d}: give multiples of 8 between 8 and the model's {full_dim} dimensions.")
    if "binary" in precisions and not dims and full_dim % 8:
        raise InputError(f"--precision binary: needs a multiple of 8 dimensions; pass --dimensions {full_dim // 8 * 8}.")
    # Only the full dimension asked for is the same as not truncating at all.
    spec = CompactSpec(() if dims == [full_dim] else tuple(dims), precisions)
    return spec if spec.forms(full_dim) else None


@dataclass(frozen=True)
class Int8Range(JsonRecord):
    """One truncation's range per dimension: int8 codes -128..127 span min..max."""

    min: tuple[float, ...]
    max: tuple[float, ...]


@dataclass(frozen=True)
class Int8Calibration(JsonRecord):
    """A generation's int8 ranges (`calibrate_int8`: the calibrate step's answer); the manifest records its
    `to_json()` (`compact.int8`)."""

    chunks: int  # the calibration vectors the ranges were measured on
    ranges: dict[str, Int8Range]  # by truncation: its number of dimensions, as a JSON key

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Int8Calibration":
        return cls(int(data.get("chunks", 0)), {dim: Int8Range.from_json(r) for dim, r in (data.get("ranges") or {}).items()})

    @classmethod
    def of(cls, manifest: Manifest) -> "Int8Calibration | None":
        """The manifest's ranges, once calibrated."""
        return None if manifest.int8 is None else cls.from_json(manifest.int8)


def stored_forms(manifest: Manifest) -> tuple[list[Form], Int8Calibration | None]:
    """(the extra forms a store's data files carry, their int8 calibration) from its manifest."""
    spec = spec_from_manifest(manifest)
    if spec is None:
        return [], None
    return spec.forms(int(manifest.model.dim)), Int8Calibration.of(manifest)


def spec_from_manifest(manifest: Manifest) -> CompactSpec | None:
    if manifest.compact is None:
        return None
    dimensions, precisions = manifest.compact.forms()
    return CompactSpec(dimensions, precisions)


def truncate(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The first `dim` dimensions, renormalized to unit length (float32)."""
    out = np.ascontiguousarray(vectors[:, :dim], dtype=np.float32)
    if dim < vectors.shape[1]:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.maximum(norms, 1e-12)
    return out


def calibrate_int8(vectors: np.ndarray, dims: Sequence[int]) -> Int8Calibration:
    """Per-dimension int8 ranges from calibration vectors, for each truncation in `dims`."""
    if len(vectors) == 0:
        raise StoreError("int8 calibration needs at least one vector; the store's first shard has no chunks.")
    ranges = {}
    for dim in dims:
        x = truncate(vectors, dim)
        ranges[str(dim)] = Int8Range(tuple(x.min(axis=0).tolist()), tuple(x.max(axis=0).tolist()))
    return Int8Calibration(int(len(vectors)), ranges)


def _int8_params(calibration: Int8Calibration | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
    found = calibration.ranges.get(str(dim)) if calibration else None
    if not found:
        raise StoreError(
            "int8 vectors need the store's calibration ranges (manifest `compact.int8`), and none match "
            f"{dim} dimensions; rerun the store with `wikiembed run` to calibrate."
        )
    lo = np.asarray(found.min, dtype=np.float32)
    hi = np.asarray(found.max, dtype=np.float32)
    step = np.maximum(hi - lo, 1e-12) / 255.0
    return lo, step.astype(np.float32)


def encode(vectors: np.ndarray, form: Form, int8_calibration: Int8Calibration | None = None) -> np.ndarray:
    """The stored values of `form` for float32 vectors [n, full_dim]: shape [n, form.width]."""
    x = truncate(vectors, form.dim)
    if form.precision == "float32":
        return x
    if form.precision == "float16":
        return x.astype(np.float16)
    if form.precision == "int8":
        lo, step = _int8_params(int8_calibration, form.dim)
        return (np.clip(np.rint((x - lo) / step), 0, 255) - 128).astype(np.int8)
    return np.packbits(x > 0, axis=1)


def arrow_column(values: np.ndarray, form: Form) -> pa.FixedSizeListArray:
    flat = pa.array(values.reshape(-1), type=_ARROW[form.precision])
    return pa.FixedSizeListArray.from_arrays(flat, form.width)


def column_values(column: pa.Array | pa.ChunkedArray, form: Form) -> np.ndarray:
    """A fixed-size-list column (or a slice of one) as a numpy array [n, form.width]."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), form.width)


def _signs(bits: np.ndarray, dim: int) -> np.ndarray:
    """Packed sign bits as ±1 float32 [n, dim]."""
    return np.unpackbits(bits, axis=1, count=dim).astype(np.float32) * 2.0 - 1.0


class Scorer:
    """Scores of a batch of queries against stored vectors of one form (higher is better).

    `score` is the first-stage score used to rank all vectors (cosine for float forms, the query
    against dequantized vectors for int8, `1 - 2·hamming/dim` for binary); `rescore` is the
    binary form's second stage: the float query against the ±1 vectors.
    """

    def __init__(self, queries: np.ndarray, form: Form, int8_calibration: Int8Calibration | None = None) -> None:
        self.form = form
        self.q = truncate(queries, form.dim)
        if form.precision == "int8":
            lo, step = _int8_params(int8_calibration, form.dim)
            # q · ((code + 128) · step + lo) = (q · step) · code + q · (128 · step + lo): one matmul per batch.
            self._q_scaled = self.q * step
            self._offset = self.q @ (128.0 * step + lo)
        elif form.precision == "binary":
            self._q_signs = np.where(self.q > 0, 1.0, -1.0).astype(np.float32)

    @property
    def weights(self) -> np.ndarray:
        """Float and int8 forms: the queries as weights on the stored values, [n_queries, dim]:
        the score is `weights · stored` plus a constant per query (none for float forms)."""
        if self.form.precision == "binary":
            raise ValueError("binary scores are Hamming distances, not weighted sums of the stored bytes")
        return self._q_scaled if self.form.precision == "int8" else self.q

    def score(self, stored: np.ndarray) -> np.ndarray:
        """[n_queries, n_vectors] first-stage scores."""
        p = self.form.precision
        if p in ("float32", "float16"):
            return self.q @ stored.astype(np.float32, copy=False).T
        if p == "int8":
            return self._q_scaled @ stored.astype(np.float32).T + self._offset[:, None]
        # ±1 · ±1 summed is dim - 2·hamming: an exact Hamming distance through one matmul.
        return (self._q_signs @ _signs(stored, self.form.dim).T) / self.form.dim

    def rescore(self, stored: np.ndarray) -> np.ndarray:
        """[n_queries, n_vectors] second-stage scores for binary vectors."""
        return self.q @ _signs(stored, self.form.dim).T / np.sqrt(self.form.dim)


def form_by_name(name: str, spec: CompactSpec | None, full_dim: int, flag: str = "--form") -> Form:
    """The stored form a user named (`float32`, `int8`, `binary@128`, ...), or an InputError listing those present."""
    available = available_forms(spec, full_dim)
    for form in available:
        if form.name == name:
            return form
    raise InputError(
        f"{flag} {name!r}: this store holds {', '.join(f.name for f in available)}; pick one of those, "
        "or build a store with more forms (`wikiembed run --dimensions N --precision float16,int8,binary`)."
    )


def available_forms(spec: CompactSpec | None, full_dim: int) -> list[Form]:
    return [Form("float32", full_dim, full_dim), *(spec.forms(full_dim) if spec else [])]


def card_section(manifest: Manifest) -> list[str]:
    """The dataset card's markdown lines describing a store's compact forms (none when it has none)."""
    forms = stored_forms(manifest)[0]
    calibration = manifest.int8  # rendered as the manifest holds it
    if not forms:
        return []
    lines = [
        "## Compact forms",
        "",
        "Besides `embedding` (float32), each row carries these forms of the same vector, derived from it "
        "(never embedded again):",
        "",
        "| column | precision | dimensions | bytes/vector | how to read it |",
        "| --- | --- | --- | --- | --- |",
    ]
    how = {
        "float32": "first dimensions of `embedding`, renormalized to unit length",
        "float16": "cast to float32; a dot product is the cosine",
        "int8": "`x = (code + 128) * step + min`, `step = (max - min) / 255`, per dimension (ranges below)",
        "binary": "`numpy.unpackbits(v, count=dim)`: bit 1 where the value was > 0; compare by Hamming distance",
    }
    for f in forms:
        lines.append(f"| `{f.column}` | {f.precision} | {f.dim} | {f.bytes_per_vector} | {how[f.precision]} |")
    if any(f.dim < f.full_dim for f in forms):
        lines += ["", "Truncated forms keep the first dimensions and renormalize them (Matryoshka truncation)."]
    if calibration:
        lines += [
            "",
            f"int8 ranges per dimension, from the store's first {calibration['chunks']} chunks (values outside them "
            "are clipped), keyed by the number of dimensions:",
            "",
            "```json",
            json.dumps(calibration["ranges"]),
            "```",
        ]
    return lines + [""]
