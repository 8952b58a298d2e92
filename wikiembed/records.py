"""The run store's manifest as typed records: read and written only by `wikiembed.store.Store`.

`manifest.json` of a generation is a `Manifest`: where the rows came from (`SourceRecord`), the
model and what shapes its vectors (`ModelRecord`), the `Chunking`, the shard plan (`ShardPlan`),
the options of the run that planned it (`settings`), the compact forms (`CompactRecord`), the
snapshot's checksum (`SnapshotRecord`),
skipped and repaired rows, the versions of the libraries, the generation and the published one
it reuses vectors from, and the kind of vectors it holds. Every module takes these objects;
only `Store.read_manifest` / `write_manifest` see the JSON. What the steps hand each other (the run
summary, the status, the fine-tune's and the improve loop's records) is in `wikiembed.results`.

Versions. `format` is the manifest's layout version (`FORMAT`). A manifest written by an older
wikiembed opens: fields it lacks take their defaults (a plain mean/CLS model with no prompts,
no compact forms). One of a newer layout is refused with the upgrade that reads it. Fields
this version does not know are kept through a read-modify-write (`extra="allow"`), so an
older wikiembed never drops what a newer one recorded. `manifest_of` and `marker_of` read a manifest
and a marker from their JSON, refusing a newer layout by name; `misfit` says why a valid marker
still does not vouch for its shard in a generation.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from wikiembed.errors import StoreError

# The manifest layout this wikiembed writes and reads.
FORMAT = 1
# The `_done/` marker layout this wikiembed writes and reads; a marker without the field is of
# layout 1 (the first: markers written before the field existed read as this one). A marker of a
# newer layout is refused with the upgrade that reads it, naming its file (`marker_of`);
# one that is not a whole marker of a layout this wikiembed knows vouches for nothing (`Store.states`).
MARKER_FORMAT = 1


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    def changed(self, **changes: Any) -> "_Record":
        """A copy with `changes` (validated, as a read would: nested records from their dicts)."""
        return type(self).model_validate({**self.model_dump(), **changes})


class ModelRecord(_Record):
    """The model a generation was embedded with, and everything beside its weights that shapes its
    vectors (`wikiembed.plan.model_record` resolves it once, at planning)."""

    model_id: str
    revision: str
    dim: int
    max_tokens: int | None = None
    # Put before every document (resolved as encode_document picks it; "" for none).
    document_prompt: str = ""
    # The prompt search and eval put before queries (as encode_query picks it).
    query_prompt: str = ""
    # Pooling, include_prompt, Dense layers, truncate_dim, normalize (`ModelInfo.shape`); None: an
    # older store, a plain mean/CLS model.
    shape: dict[str, Any] | None = None


class SourceRecord(_Record):
    """Where a generation's rows came from (`Source.as_dict()`) and the fingerprint of what was read."""

    spec: str = ""
    kind: str | None = None  # sample | parquet | jsonl | disk | hub
    config: str | None = None
    revision: str | None = None  # Hub sources: the commit the rows were read at
    split: str | None = None
    limit: int | None = None
    columns: dict[str, str] = Field(default_factory=dict)  # our name: the source's name
    license: str | None = None
    description: str | None = None
    fingerprint: str | None = None  # of the rows read (`wikiembed.sources.fingerprint`)


class Chunking(_Record):
    """How articles become chunks; part of the store's identity (`wikiembed.chunking.make_chunking`
    validates it against the model)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    chunker: str = "tokens"  # tokens | chars
    chunk_size: int = 256  # tokens (special tokens included) or characters
    chunk_overlap: int = 0

    def __init__(self, chunker: str = "tokens", chunk_size: int = 256, chunk_overlap: int = 0, **extra: Any) -> None:
        super().__init__(chunker=chunker, chunk_size=chunk_size, chunk_overlap=chunk_overlap, **extra)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()


class CompactRecord(_Record):
    """The compact forms a generation's data files carry beside float32 (`wikiembed.compact`)."""

    dimensions: list[int] = Field(default_factory=list)  # truncations; empty: the model's full dimension only
    precisions: list[str] = Field(default_factory=list)  # float32 | float16 | int8 | binary
    # Per-dimension int8 ranges (`calibrate_int8`), once calibrated; None until then.
    int8: dict[str, Any] | None = None

    def forms(self) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """What identifies the forms (the calibration is derived from the vectors, not asked for)."""
        return tuple(self.dimensions), tuple(self.precisions)


class SnapshotRecord(_Record):
    """The checksum of a generation's `snapshot.parquet`, taken when it was written."""

    sha256: str
    bytes: int


class VectorKind(_Record):
    """What produced a set of vectors, recorded with every shard (`Marker.vectors`) and for the
    generation (`Manifest.vectors`).

    Vectors are interchangeable (may share a store, may be reused for unchanged
    text) when model, revision and everything that shapes them agree: pooling,
    whether pooling sees the prompt, Dense layers, normalization, truncation and
    the prompt put before each text. The backend and compute dtype are recorded
    for provenance only, as they move a vector by float rounding, not in kind.
    Records written before a field existed read it as its default (what the
    engine did then: no prompt, no Dense, no truncation); a null reads as absent.
    """

    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())

    backend: str | None  # local | tei | modal
    model: str | None
    revision: str | None
    pooling: str | None  # sentence-transformers mode(s): mean, cls, max, ..., "+"-joined when concatenated
    normalize: bool | None  # whether vectors are L2-normalized
    dtype: str | None  # compute dtype (float32, bfloat16, ...) or "unknown" where the server does not say
    prompt: str = ""  # the text put before every document
    include_prompt: bool = True  # whether pooling saw the prompt's tokens
    dense: tuple[str, ...] = ()  # each Dense layer as "in->out Activation"
    truncate_dim: int | None = None

    def __init__(self, backend: str | None = None, model: str | None = None, revision: str | None = None,
                 pooling: str | None = None, normalize: bool | None = None, dtype: str | None = None, prompt: str = "",
                 include_prompt: bool = True, dense: tuple[str, ...] = (), truncate_dim: int | None = None, **extra: Any) -> None:
        super().__init__(backend=backend, model=model, revision=revision, pooling=pooling, normalize=normalize, dtype=dtype,
                         prompt=prompt, include_prompt=include_prompt, dense=tuple(dense), truncate_dim=truncate_dim, **extra)

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            required = ("backend", "model", "revision", "pooling", "normalize", "dtype")
            data = {k: v for k, v in data.items() if v is not None or k in required}
            for name in required:
                data.setdefault(name, None)
        return data

    @classmethod
    def of_model(cls, info: Any, backend: str, dtype: str, prompt: str = "") -> "VectorKind":
        """The kind of vectors a backend makes from a model (a `wikiembed.model.ModelInfo`)."""
        return cls(
            backend, info.model_id, info.revision, info.pooling, info.normalize, dtype, prompt,
            info.include_prompt, tuple(layer.describe() for layer in info.dense), info.truncate_dim,
        )

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def with_prompt(self, prompt: str) -> "VectorKind":
        return self.model_copy(update={"prompt": prompt})

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
        parts.append(str(self.dtype))
        return ", ".join(parts)


class ShardPlan(_Record):
    """The source's snapshot rows cut into shards: the unit of work, retry and rerun."""

    shard_rows: int
    rows: int
    shards: list[tuple[int, int]]  # [start, end) row ranges, in order

    def __len__(self) -> int:
        return len(self.shards)

    def rows_of(self, shard: int) -> int:
        start, end = self.shards[shard]
        return end - start


class BasePart(_Record):
    """A done shard file of an earlier generation that a generation keeps as it is, less the rows of
    the articles dropped since (edited or removed: their ids are in the generation's
    `dropped.parquet`). An incremental run writes only the articles that changed (`wikiembed.snapshots`)."""

    gen: str
    shard: int
    sha256: str
    bytes: int
    rows: int  # articles in the file
    chunks: int  # rows in the file
    arrow_bytes: int | None = None
    dropped_rows: int = 0
    dropped_chunks: int = 0

    @property
    def live_chunks(self) -> int:
        return self.chunks - self.dropped_chunks


class Manifest(_Record):
    """A generation's `manifest.json`.

    A generation made by an incremental run holds its own shards (the plan: the articles added or
    edited since the generation it follows) and `base`: the shard files of earlier generations it
    keeps, less their dropped articles."""

    format: int = FORMAT
    source: SourceRecord = Field(default_factory=SourceRecord)
    model: ModelRecord
    chunking: Chunking
    compact: CompactRecord | None = None  # None: float32 at the model's dimension only
    # The planning run's `RunSettings` as given (validated where a run takes them up again: an
    # option a later version adds must not make this manifest unreadable).
    settings: dict[str, Any] = Field(default_factory=dict)
    plan: ShardPlan
    snapshot: SnapshotRecord | None = None
    skipped: dict[str, int] = Field(default_factory=dict)  # source rows left out, by reason
    skipped_examples: list[Any] = Field(default_factory=list)
    repaired: dict[str, int] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)  # of the libraries that planned it
    generation: str | None = None
    previous_generation: str | None = None  # the published generation whose vectors it may reuse
    base: list[BasePart] = Field(default_factory=list)
    changes: dict[str, int] | None = None  # articles added, edited and removed since previous_generation
    # The kind of vectors it holds: set by the first shard embedded, or carried over from the
    # previous generation.
    vectors: VectorKind | None = None
    updated: str | None = None

    def changed(self, **changes: Any) -> "Manifest":  # noqa: D102 - typed for callers
        return Manifest.model_validate({**self.model_dump(), **changes})

    @property
    def model_id(self) -> str:
        return self.model.model_id

    @property
    def int8(self) -> dict[str, Any] | None:
        """The generation's int8 ranges, once calibrated."""
        return self.compact.int8 if self.compact else None


class Marker(_Record):
    """A shard's `_done/NNNNN.json`: the data file it vouches for (size, sha256, and the stat that
    lets a resume trust it without rehashing) and what went into it. Written after the data file;
    a shard is done exactly when its marker matches its file and its generation (`Store.read_done`)."""

    format: int = MARKER_FORMAT
    shard: int
    rows: int  # source rows of the shard
    chunks: int
    embedded_chunks: int = 0
    reused_chunks: int = 0  # taken from the published generation (unchanged text)
    embedded_chars: int = 0
    sha256: str
    bytes: int
    arrow_bytes: int | None = None  # uncompressed column bytes (the card's num_bytes)
    mtime_ns: int | None = None
    inode: int | None = None
    model: str | None = None
    vectors: VectorKind | None = None  # the kind of vectors its data file holds
    seconds: float = 0.0


class ShardResult(Marker):
    """A marker as the flow gets it back from a shard's embed task: what the run cost besides."""

    attempts: int = 1  # task runs it took (Prefect's retries)
    request_retries: int = 0  # requests its backend retried (a shard worker's TEI client)
    worker_pid: int | None = None  # the shard worker process that ran it


def manifest_of(record: Any, where: str) -> Manifest:
    """A manifest from its JSON: one of an older layout opens (missing fields take their defaults),
    one of a newer layout is refused with the upgrade that reads it, a damaged one is named."""
    found = record.get("format") if isinstance(record, dict) else None
    if isinstance(found, int) and found > FORMAT:
        raise StoreError(
            f"{where}: manifest.json has layout {found}, made by a newer wikiembed than this one (which reads up to "
            f"{FORMAT}); upgrade wikiembed (`pip install -U wikiembed`, or pull the repository) to open it. Nothing was changed."
        )
    if found != FORMAT:
        raise StoreError(f"{where}: manifest format {found!r} is not {FORMAT}; use a new --store.")
    try:
        return Manifest.model_validate(record)
    except ValidationError as exc:
        problem = exc.errors()[0]
        field = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        raise StoreError(
            f"{where}: manifest.json is damaged at {field} ({problem['msg']}); restore it from a backup, or remove it and run "
            "the same `wikiembed run` that made the store again: it rebuilds manifest.json and keeps the done shards."
        ) from None


def misfit(marker: Marker, kind: VectorKind | None) -> str | None:
    """Why a valid marker still does not vouch for its shard in this generation, or None when it does:
    a marker layout this wikiembed does not read (an older one than the first: a newer one is refused
    as it is read, `marker_of`), or vectors of another kind than `kind` (the generation's: another model
    revision, pooling, prompt ...)."""
    if marker.format != MARKER_FORMAT:
        return (f"its _done marker has layout {marker.format}, not {MARKER_FORMAT} (the one this wikiembed reads); "
                "upgrade wikiembed, or redo the shard")
    if kind is not None and marker.vectors is not None and not kind.agrees_with(marker.vectors):
        return (f"its vectors come from {marker.vectors.describe()}, but the generation holds vectors from "
                f"{kind.describe()}; redo the shard with the generation's own model")
    return None


def marker_of(record: Any, path: str) -> Marker | None:
    """A marker from its JSON; one that is not a whole marker (cut short, hand-edited) vouches for nothing. One of a
    newer layout than this wikiembed reads (`format` above `MARKER_FORMAT`) is refused, naming its file: read as
    "not done", its shard would be embedded again and its marker replaced by an older layout's."""
    found = record.get("format") if isinstance(record, dict) else None
    if isinstance(found, int) and not isinstance(found, bool) and found > MARKER_FORMAT:
        raise StoreError(
            f"{path}: a _done marker of layout {found}, written by a newer wikiembed than this one (which reads marker "
            f"layouts up to {MARKER_FORMAT}); upgrade wikiembed (`pip install -U wikiembed`, or pull the repository) to "
            "read or resume this store. Nothing was changed."
        )
    try:
        return Marker.model_validate(record)
    except ValidationError:
        return None
