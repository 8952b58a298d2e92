"""The run store's manifest as typed records: read and written only by `wikiembed.store.Store`.

`manifest.json` of a generation is a `Manifest`: where the rows came from (`source`), the model
and what shapes its vectors (`ModelRecord`), the chunking, the shard plan (`ShardPlan`), the
options of the run that planned it (`settings`), the compact forms, the snapshot's checksum,
skipped and repaired rows, the versions of the libraries, the generation and the published one
it reuses vectors from, and the kind of vectors it holds. Every module takes these objects;
only `Store.read_manifest` / `write_manifest` see the JSON.

Versions. `format` is the manifest's layout version (`FORMAT`). A manifest written by an older
wikiembed opens: fields it lacks take their defaults (a plain mean/CLS model with no prompts,
no compact forms). One of a newer layout is refused with the upgrade that reads it. Fields
this version does not know are kept through a read-modify-write (`extra="allow"`), so an
older wikiembed never drops what a newer one recorded.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# The manifest layout this wikiembed writes and reads.
FORMAT = 1


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


class Manifest(_Record):
    """A generation's `manifest.json`."""

    format: int = FORMAT
    source: dict[str, Any] = Field(default_factory=dict)  # `Source.as_dict()` and the fingerprint
    model: ModelRecord
    chunking: dict[str, Any]  # `Chunking.as_dict()`
    compact: dict[str, Any] | None = None  # dimensions, precisions and int8 ranges (`wikiembed.compact`)
    settings: dict[str, Any] = Field(default_factory=dict)  # the planning run's `RunSettings`
    plan: ShardPlan
    snapshot: dict[str, Any] | None = None  # sha256 and bytes of the snapshot
    skipped: dict[str, int] = Field(default_factory=dict)  # source rows left out, by reason
    skipped_examples: list[Any] = Field(default_factory=list)
    repaired: dict[str, int] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)  # of the libraries that planned it
    generation: str | None = None
    previous_generation: str | None = None  # the published generation whose vectors it may reuse
    # The kind of vectors it holds (`VectorKind.as_dict()`): set by the first shard embedded, or
    # carried over from the previous generation.
    vectors: dict[str, Any] | None = None
    updated: str | None = None

    def changed(self, **changes: Any) -> "Manifest":  # noqa: D102 - typed for callers
        return Manifest.model_validate({**self.model_dump(), **changes})

    @property
    def model_id(self) -> str:
        return self.model.model_id

    @property
    def int8(self) -> dict[str, Any] | None:
        """The generation's int8 ranges, once calibrated."""
        return (self.compact or {}).get("int8")


class Marker(_Record):
    """A shard's `_done/NNNNN.json`: the data file it vouches for (size, sha256, and the stat that
    lets a resume trust it without rehashing) and what went into it. Written after the data file;
    a shard is done exactly when its marker matches its file (`Store.read_done`)."""

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
    vectors: dict[str, Any] | None = None  # the kind of vectors (`VectorKind.as_dict()`)
    seconds: float = 0.0


class ShardResult(Marker):
    """A marker as the flow gets it back from a shard's embed task: what the run cost besides."""

    attempts: int = 1  # task runs it took (Prefect's retries)
    request_retries: int = 0  # requests its backend retried (a shard worker's TEI client)
    worker_pid: int | None = None  # the shard worker process that ran it
