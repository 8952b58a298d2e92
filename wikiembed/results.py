"""What the steps hand each other, and what `--json` / `--summary-json` write: typed records.

`wikiembed.records` holds what the store keeps (the manifest, the markers); this module holds what a
step returns to the next one and to the CLI: the run summary (`RunSummary`), what the store's
status shows (`StatusPayload`), what publishing and the export step did (`Published`, `Exported`),
the fine-tune's record (`FinetuneRecord`) and the improve loop's result (`ImproveResult`). Each is
a frozen dataclass whose `to_json()` is exactly the JSON that `--json`, `--summary-json` and the
files have always held: the same keys, in the same order, with the same values; `from_json()` reads
it back. Producers build the record, consumers read its
attributes; only `to_json()` / `from_json()` see the keys.

Where a value leaves the process through Prefect (a flow's return value, which a deployment's caller
reads and Prefect may persist, or the summary a `ShardsFailed` carries) it goes as its `to_json()`,
so what another process, or another version of wikiembed, reads there is plain JSON; a caller turns
it back into the record with `from_json()`. Records pickle (module-level frozen dataclasses), so a
Prefect task may return one.

Conventions: a field that a record's JSON holds only sometimes defaults to None and is left out of
`to_json()` when None (`optional()`); sequences are tuples (written as JSON lists); values that are
open-ended JSON objects (the chunking, the source changes) stay dicts.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

R = TypeVar("R", bound="JsonRecord")


def optional(default: Any = None) -> Any:
    """A field left out of the record's JSON while it is None (the key the JSON held only sometimes)."""
    return field(default=default, metadata={"omit_none": True})


def _to_json(value: Any) -> Any:
    if isinstance(value, JsonRecord):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_json(kind: Any, value: Any) -> Any:
    """`value` (as JSON holds it) as the field's type says: records from their objects, tuples from lists."""
    if value is None:
        return None
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return _from_json(options[0], value) if len(options) == 1 else value
    if isinstance(kind, type) and issubclass(kind, JsonRecord) and isinstance(value, Mapping):
        return kind.from_json(value)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(kind)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        return tuple(_from_json(item, v) for v in value)
    return value


@dataclass(frozen=True)
class JsonRecord:
    """A frozen record with one JSON form: its fields in order (`optional()` ones only when set)."""

    def to_json(self) -> dict[str, Any]:
        """The record as JSON holds it (plain dicts, lists and scalars), keys in field order."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = _to_json(value)
        return out

    @classmethod
    def from_json(cls: type[R], data: Mapping[str, Any]) -> R:
        """The record from its JSON; keys it does not know (written by a later version) are ignored, and a
        key it lacks takes the field's default."""
        hints = _hints(cls)
        return cls(**{f.name: _from_json(hints[f.name], data[f.name]) for f in fields(cls) if f.name in data})

    def replace(self: R, **changes: Any) -> R:
        """A copy with `changes`."""
        return dataclasses.replace(self, **changes)


# The run summary ---------------------------------------------------------------


@dataclass(frozen=True)
class EvalHeadline(JsonRecord):
    """A run's retrieval check (`--eval-sample`): titles as queries, float32 (the card has every form)."""

    n: int
    recall_at_1: float
    recall_at_10: float
    mrr: float


@dataclass(frozen=True)
class IndexBuilt(JsonRecord):
    """One form's approximate index as a run's `--index` built it."""

    form: str
    rows: int
    bytes: int
    seconds: float
    parts_built: int  # data files whose rows this build indexed (into new segments)
    parts_reused: int  # data files kept in segments reused (from an earlier generation or build)


@dataclass(frozen=True)
class PredictedChunks(JsonRecord):
    predicted: int
    predicted_ci95: Any  # [low, high]
    actual: int


@dataclass(frozen=True)
class PredictedTokens(JsonRecord):
    predicted: int
    predicted_ci95: Any  # [low, high]


@dataclass(frozen=True)
class PredictedSeconds(JsonRecord):
    predicted: float | None  # None: no rate recorded for the run's backend and hardware
    actual: float
    basis: str  # where the predicted rate came from

    def predicted_text(self) -> str:
        """The predicted seconds, or why there are none."""
        return "not estimated" if self.predicted is None else str(self.predicted)


@dataclass(frozen=True)
class PredictedVsActual(JsonRecord):
    """What the estimate said a run would take, next to what it took (`wikiembed.estimate.compare`)."""

    chunks: PredictedChunks
    tokens: PredictedTokens
    seconds: PredictedSeconds


@dataclass(frozen=True)
class RunSummary(JsonRecord):
    """What a run (`embed-dataset`) or a rerun (`rerun-shards`) did: `--summary-json`, the flow's return value,
    the UI's summary artifact and the CLI's last lines."""

    store: str
    generation: str | None
    source: str  # as the user named it (`source_label`)
    model: str
    revision: str
    backend: str
    device: str | None  # where shards were embedded; None: this run embedded nothing
    chunking: dict[str, Any]
    tokenizer: str | None  # what counted the token chunker's tokens (None: the character chunker)
    shards_total: int
    shards_done: int
    shards_failed: int
    failed_shards: tuple[int, ...]
    pending_shards: tuple[int, ...]
    rows: int
    skipped_rows: int
    chunks: int  # of the done shards
    embedded_chunks: int  # by this run
    reused_chunks: int  # by this run, from the published generation
    kept_chunks: int  # rows kept from earlier generations (an incremental run: articles that did not change)
    retries: int  # retried requests inside the backend, plus retried task runs of done and failed shards
    seconds: float
    chars_per_s: float
    changes: dict[str, int] | None = optional()  # articles added, edited and removed since the published generation
    eval: EvalHeadline | None = optional()
    index: tuple[IndexBuilt, ...] | None = optional()
    predicted_vs_actual: PredictedVsActual | None = optional()
    rerun_shards: tuple[int, ...] | None = optional()  # a rerun: the shards it was asked to redo
    rerun_done: tuple[int, ...] | None = optional()  # and those of them it finished

    @property
    def complete(self) -> bool:
        """Every shard done and none failed (a rerun's failed shard may still hold its earlier data)."""
        return not self.shards_failed and self.shards_done >= self.shards_total


# Publishing ---------------------------------------------------------------------


@dataclass(frozen=True)
class Building(JsonRecord):
    """A newer generation being built beside the one a store reads (`Store.building`): its id and folder,
    and how far it got (or why it cannot be read)."""

    generation: str
    path: str
    error: str | None = optional()  # its manifest or markers could not be read
    source: str | None = optional()
    total: int | None = optional()  # shards
    done: int | None = optional()
    failed: int | None = optional()


@dataclass(frozen=True)
class Published(JsonRecord):
    """What `wikiembed export` / `upload` print and `wikiembed.publish.publish` returns: the dataset folder written."""

    target: str
    files: int  # the data files and the card
    bytes: int
    data_files: tuple[str, ...]
    shards: int
    rows: int
    generation: str | None
    building: Building | None  # a newer generation being built beside it (`Store.building`)
    url: str
    committed: bool  # False: the target already held exactly this


@dataclass(frozen=True)
class Exported(JsonRecord):
    """The export step's answer (`wikiembed.store_ops.export_store`): the generation promoted, and its upload if asked."""

    promoted: bool
    published: Published | None


# Retrieval figures, the fine-tune and the improve loop -------------------------

# The figures of a retrieval check, each with its 95% interval (`wikiembed.evaluate.metrics`).
METRICS = ("recall_at_1", "recall_at_10", "mrr", "ndcg_at_10")


def _metric(name: str) -> str:
    if name not in METRICS:
        raise KeyError(name)
    return name


class ByMetric:
    """`value(metric)` and `interval(metric)` by a metric's name (the improve loop's deciding figure is a setting)."""

    def value(self, metric: str) -> float:
        """One of `METRICS` by name."""
        return getattr(self, _metric(metric))

    def interval(self, metric: str) -> tuple[float, float]:
        """The 95% interval of one of `METRICS`."""
        low, high = getattr(self, _metric(metric) + "_ci95")
        return low, high


@dataclass(frozen=True, kw_only=True)
class Figures(ByMetric, JsonRecord):
    """A set of queries' retrieval figures with their 95% intervals (`wikiembed.evaluate.metrics`), or the paired
    difference of two such sets (`paired_difference`: no `n`; `meaning` says which minus which, or `form` names the
    stored form the two stores were compared on)."""

    form: str | None = optional()
    meaning: str | None = optional()
    n: int | None = optional()
    recall_at_1: float
    recall_at_1_ci95: Any  # [low, high]
    recall_at_10: float
    recall_at_10_ci95: Any
    mrr: float
    mrr_ci95: Any
    ndcg_at_10: float
    ndcg_at_10_ci95: Any


@dataclass(frozen=True, kw_only=True)
class StoreFigures(ByMetric, JsonRecord):
    """One store's figures in the improve loop's result: what was scored, each metric, then each 95% interval."""

    store: str
    generation: str | None
    model: str
    n: int
    recall_at_1: float
    recall_at_10: float
    mrr: float
    ndcg_at_10: float
    recall_at_1_ci95: Any
    recall_at_10_ci95: Any
    mrr_ci95: Any
    ndcg_at_10_ci95: Any


@dataclass(frozen=True)
class PairCounts(JsonRecord):
    """How a judged-queries file met the store (`wikiembed.queries.match`)."""

    read: int
    matched: int
    unmatched: int  # naming no article or chunk of the store
    relevant_missing: int
    near_duplicates: int | None = optional()  # merged into a query the model reads the same (absent in older records)


@dataclass(frozen=True)
class FinetuneRecord(JsonRecord):
    """A fine-tune (`wikiembed finetune`, the improve loop's first step): `--json`, and `finetune.json` in the model
    folder, which a rerun with the same inputs returns instead of training again."""

    out: str
    base_model: str
    base_revision: str
    store: str
    generation: str | None
    chunks: int
    pairs_file: str
    pairs: PairCounts
    train: int  # queries trained on
    holdout: int  # queries held out (never trained on)
    examples: int
    negatives_from: str  # approximate index | exact scan
    loss: str
    settings: dict[str, Any]  # `FinetuneSettings` as it ran
    device: str
    train_loss: float
    pool: int  # chunks the held-out queries are ranked against
    before: Figures
    after: Figures
    difference: Figures
    seconds: float
    inputs: dict[str, Any]  # what makes it this fine-tune: a rerun with the same inputs returns this record


@dataclass(frozen=True)
class Comparison(JsonRecord):
    """The improve loop's compare step: the old and the new store scored on the same held-out queries (float32, over
    every chunk), and the paired difference, new minus old (`evaluate(old, against=new)`, recorded in neither store:
    `wikiembed.evaluate.EvalResult.comparison`)."""

    old: StoreFigures
    new: StoreFigures
    difference: Figures  # of the float32 form


@dataclass(frozen=True)
class ReembedCounts(JsonRecord):
    """What the improve loop's re-embed left in the new store (from its `RunSummary`)."""

    chunks: int
    embedded_chunks: int
    reused_chunks: int
    shards_done: int
    shards_total: int

    @classmethod
    def of(cls, summary: RunSummary) -> "ReembedCounts":
        return cls(summary.chunks, summary.embedded_chunks, summary.reused_chunks, summary.shards_done, summary.shards_total)


@dataclass(frozen=True)
class ImproveResult(JsonRecord):
    """The improve loop's outcome (`improve-model`'s return value, `wikiembed improve --json`)."""

    publish: bool  # the new store is better by the margin, its interval above zero
    reason: str
    published: Exported | None  # the export's answer, when it was published
    served: Any  # where the served link now points, when it was repointed
    metric: str
    margin: float
    old: StoreFigures
    new: StoreFigures
    difference: Figures
    finetune: FinetuneRecord
    reembed: ReembedCounts


# A store's status -------------------------------------------------------------


@dataclass(frozen=True)
class ShardStatus(JsonRecord):
    """One planned shard in `wikiembed status` (`wikiembed.store_parts.ShardState` without its marker)."""

    shard: int
    state: str  # done | failed | pending | changed
    rows: int
    chunks: int | None
    error: str | None
    attempts: int


@dataclass(frozen=True)
class KeptFiles(JsonRecord):
    """The data files of earlier generations an incremental generation keeps (its unchanged articles)."""

    files: int
    chunks: int  # live rows in them
    generations: int
    damaged: tuple[str, ...]  # `GEN/NNNNN` whose bytes no longer match (checked with --verify only)


@dataclass(frozen=True)
class StatusPayload(JsonRecord):
    """`wikiembed status --json`: a generation's shards and what the manifest says about its rows."""

    store: str
    generation: str | None
    source: str
    model: str
    chunking: dict[str, Any]
    skipped_rows: int
    skipped: dict[str, int]  # source rows left out, by reason
    repaired: dict[str, int]
    shards: tuple[ShardStatus, ...]
    done: int
    failed: int
    pending: int
    changed: int  # marked done, but the marker no longer vouches for the data file
    published: str | None  # the generation `current` points at
    building: Building | None  # a newer generation being built beside it (`Store.building`)
    kept: KeptFiles

    @property
    def healthy(self) -> bool:
        """No shard whose marker stopped vouching for its file and no damaged kept file."""
        return not self.changed and not self.kept.damaged
