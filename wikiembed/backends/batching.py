"""The engine's batching: texts sorted by token count, packed into token-budget batches, padded as little as can be.

Plain numpy functions, tested without a model (`tests/wikiembed/backends/test_engine.py`):
`plan_batches` cuts a window of texts into batches, `spread` splits them over the CPU workers,
`pack_batch` lays a batch's ids out as a padded array. Used by `wikiembed.backends.engine`.

Touches: nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# A batch ends early where the text length changes, if it is at least this
# full by then: a batch of one length needs no padding and no attention mask.
UNIFORM_MIN_FILL = 0.5

# A text joins a batch only if padding it to the batch's length adds at most
# this fraction of that length, or PAD_SLACK_TOKENS, whichever is more. The
# budget alone lets a GPU batch of ~800 short texts span lengths 60 down to 20:
# on 40k sample chunks that is 12% padding; this cap makes it 4%, for 2.4x as
# many (still large) batches.
MAX_PADDING = 0.1
PAD_SLACK_TOKENS = 8


@dataclass(frozen=True)
class Batch:
    """One forward pass: `rows` index the texts, longest first; `length` is the padded length."""

    rows: np.ndarray
    length: int


def bucketed(length: int, bucket: int) -> int:
    """`length` rounded up to a multiple of `bucket`."""
    return -(-length // bucket) * bucket


def plan_batches(
    lengths: Sequence[int] | np.ndarray,
    max_batch_tokens: int,
    bucket: int = 1,
    max_length: int | None = None,
    min_fill: float = UNIFORM_MIN_FILL,
    max_padding: float = MAX_PADDING,
    padding_slack: int = PAD_SLACK_TOKENS,
) -> list[Batch]:
    """Pack texts into batches whose padded size (rows x padded length) stays within the budget.

    Texts are taken longest first, so each batch pads to its first text's
    length (rounded up to `bucket`, but never past `max_length` unless the
    text itself is longer). A batch stops early where the length changes if it
    is `min_fill` full by then, so most batches hold a single length, and
    before a text that would need more than `max_padding` of the batch's
    length (or `padding_slack` tokens) of padding. A text longer than the whole
    budget still gets a batch of its own. Every index appears in exactly one
    batch.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if max_batch_tokens < 1 or bucket < 1:
        raise ValueError(f"max_batch_tokens ({max_batch_tokens}) and bucket ({bucket}) must be >= 1")
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    batches: list[Batch] = []
    start = 0
    while start < len(order):
        longest = int(sorted_lengths[start])
        padded = bucketed(longest, bucket)
        if max_length is not None:
            padded = min(padded, max(max_length, longest))
        capacity = max(1, max_batch_tokens // max(padded, 1))
        end = min(start + capacity, len(order))
        # First position after `start` holding a shorter text (lengths descend).
        change = start + int(np.searchsorted(-sorted_lengths[start:end], -longest, side="right"))
        if change < end and change - start >= min_fill * capacity:
            end = change
        shortest_allowed = longest - max(padding_slack, max_padding * longest)
        too_short = start + int(np.searchsorted(-sorted_lengths[start:end], -shortest_allowed, side="right"))
        end = max(start + 1, min(end, too_short))
        batches.append(Batch(rows=order[start:end], length=padded))
        start = end
    return batches


def spread(batches: list[Batch], lengths: np.ndarray, parts: int, bucket: int = 1) -> list[Batch]:
    """`batches` with the costliest split in two by rows until there are `parts` of them (or each is
    one text), so that a small call (a handful of queries) keeps every CPU worker busy instead of one.

    Rows stay longest first; the shorter half pads only to its own longest text."""
    out = list(batches)
    while len(out) < parts:
        i = max(range(len(out)), key=lambda j: len(out[j].rows) * out[j].length)
        batch = out[i]
        if len(batch.rows) < 2:
            break
        half = (len(batch.rows) + 1) // 2
        rest = batch.rows[half:]
        out[i : i + 1] = [Batch(batch.rows[:half], batch.length),
                          Batch(rest, min(batch.length, bucketed(int(lengths[rest].max()), bucket)))]
    return out


def pack_batch(
    ids: np.ndarray, offsets: np.ndarray, rows: np.ndarray, length: int, pad_id: int, mask: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """The `[len(rows), length]` int64 input ids of one batch, padded with `pad_id`, and its mask.

    Row r's ids are `ids[offsets[r]:offsets[r + 1]]`. The mask (1 on real
    tokens) is returned only when `mask` is true or some row is padded: a
    batch of one length runs without one. All numpy, no per-token Python.
    """
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    positions = np.arange(length)
    if (lengths == length).all():
        packed = ids[starts[:, None] + positions].astype(np.int64)
        return packed, (np.ones(packed.shape, dtype=np.int64) if mask else None)
    real = positions < lengths[:, None]
    packed = np.full((len(rows), length), pad_id, dtype=np.int64)
    # Boolean assignment fills row-major, so the rows' ids gathered in order land
    # exactly on each row's real positions.
    before = np.cumsum(lengths) - lengths
    packed[real] = ids[np.arange(int(lengths.sum())) + np.repeat(starts - before, lengths)]
    return packed, real.astype(np.int64)


@dataclass
class _Window:
    """Texts `start .. start + size` of a call, as token ids: text i's are `ids[offsets[i]:offsets[i + 1]]`."""

    start: int
    size: int
    ids: np.ndarray
    offsets: np.ndarray


def _join(start: int, parts: list[tuple[np.ndarray, np.ndarray]]) -> _Window:
    """One window from consecutive tokenized parts (each with offsets from 0)."""
    if len(parts) == 1:
        ids, offsets = parts[0]
        return _Window(start, len(offsets) - 1, ids, offsets)
    bases = np.cumsum([0] + [len(ids) for ids, _ in parts[:-1]])
    offsets = np.concatenate([parts[0][1][:1]] + [o[1:] + base for (_, o), base in zip(parts, bases)])
    return _Window(start, len(offsets) - 1, np.concatenate([ids for ids, _ in parts]), offsets)
