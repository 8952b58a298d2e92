"""The sample an estimate counts, and the totals it scales up to (`wikiembed.estimate`).

- Drawing: a uniform sample of a source's rows (reservoir sampling, Algorithm R, while the exact row
  and character counts are taken), or of the snapshot rows a run is about to embed (`snapshot_sample`,
  which reads only the row groups that hold them).
- Counting: each sampled article cut by the run's own chunker and counted with the model's own
  tokenizer (special tokens and the document prompt included).
- Totals: ratio estimates against an exact character count, else per-article means, each with a 95%
  interval from the sample's spread (finite-population corrected; zero width when the sample is the
  whole population).

Touches: the snapshot (read) and the model's tokenizer files.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from wikiembed.chunking import chunk_table, make_chunking
from wikiembed.model import load_tokenizer, model_info
from wikiembed.sources import SNAPSHOT_SCHEMA, streamed
from wikiembed.tokenizing import encode_ids

Z95 = 1.959964


@dataclass(frozen=True)
class Total:
    """An estimated total with its 95% interval."""

    value: float
    low: float
    high: float

    def rounded(self) -> tuple[int, int]:
        """The interval in whole units."""
        return round(self.low), round(self.high)


def ratio_total(known_x: float, x: np.ndarray, y: np.ndarray, population: int) -> Total:
    """Estimate Σy over the population from a simple random sample, knowing Σx exactly (ratio estimator)."""
    n = len(x)
    r = float(y.sum() / x.sum())
    if n >= population or n < 2:
        return Total(known_x * r, known_x * r, known_x * r) if n >= population else Total(known_x * r, 0.0, math.inf)
    residual = y - r * x
    fpc = 1 - n / population
    se = known_x / float(x.mean()) * math.sqrt(fpc * float(residual.var(ddof=1)) / n)
    return Total(known_x * r, max(0.0, known_x * r - Z95 * se), known_x * r + Z95 * se)


def mean_total(population: int, y: np.ndarray) -> Total:
    """Estimate Σy over the population from a simple random sample (no auxiliary total known)."""
    n = len(y)
    est = population * float(y.mean())
    if n >= population:
        return Total(est, est, est)
    if n < 2:
        return Total(est, 0.0, math.inf)
    se = population * math.sqrt((1 - n / population) * float(y.var(ddof=1)) / n)
    return Total(est, max(0.0, est - Z95 * se), est + Z95 * se)


def reservoir(rows: Iterator[dict[str, str]], k: int, seed: int) -> tuple[list[dict[str, str]], int, int]:
    """A uniform sample of k rows (Algorithm R), plus the exact row and character counts."""
    rng = random.Random(seed)
    sample: list[dict[str, str]] = []
    count = chars = 0
    for row in rows:
        count += 1
        chars += len(row["text"])
        if len(sample) < k:
            sample.append(row)
        else:
            j = rng.randrange(count)
            if j < k:
                sample[j] = row
    return sample, count, chars


def snapshot_sample(snapshot: Path, ranges: Sequence[tuple[int, int]], sample: int,
                    seed: int) -> tuple[list[dict[str, Any]], int, int]:
    """`sample` rows drawn uniformly from the rows `ranges` of the snapshot cover, how many rows those are
    and their exact character count. Reads the text column once, of the row groups that hold such rows only."""
    import pyarrow.compute as pc

    parquet = streamed(snapshot)
    wanted = np.zeros(parquet.metadata.num_rows, dtype=bool)
    for a, b in ranges:
        wanted[a:b] = True
    candidates = np.flatnonzero(wanted)
    picked = np.sort(np.random.default_rng(seed).choice(candidates, size=min(sample, len(candidates)), replace=False))
    # Only the row groups that hold rows to embed are read (a resumed run's done shards are not):
    # `wanted` and `picked` are taken over to those groups' rows, in order.
    meta = parquet.metadata
    starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    groups = [g for g in range(meta.num_row_groups) if wanted[starts[g] : starts[g + 1]].any()]
    sizes = np.array([starts[g + 1] - starts[g] for g in groups], dtype=np.int64)
    before = np.zeros(meta.num_row_groups, dtype=np.int64)  # rows of the groups read before each group
    before[groups] = np.cumsum(sizes) - sizes
    at = np.searchsorted(starts, picked, side="right") - 1
    picked = before[at] + picked - starts[at]
    wanted = np.concatenate([wanted[starts[g] : starts[g + 1]] for g in groups]) if groups else wanted[:0]
    total_chars, rows, offset = 0, [], 0
    for batch in parquet.iter_batches(batch_size=4096, row_groups=groups) if groups else ():
        n = batch.num_rows
        mask = wanted[offset : offset + n]
        if mask.any():
            lengths = pc.utf8_length(batch.column("text")).to_numpy(zero_copy_only=False)
            total_chars += int(lengths[mask].sum())
            lo, hi = np.searchsorted(picked, [offset, offset + n])
            rows += batch.take(pa.array(picked[lo:hi] - offset)).to_pylist()
        offset += n
    return rows, len(candidates), total_chars


@dataclass(frozen=True)
class SampleCounts:
    """Per sampled article (in the sample's order): characters, chunks and tokens; and the chunks' texts."""

    chars: np.ndarray
    chunks: np.ndarray
    tokens: np.ndarray
    chunking: dict[str, Any]  # the chunking that cut them (`Chunking.as_dict()`)
    texts: list[str]  # every chunk's text, without the prompt


def sample_counts(
    rows: Sequence[dict[str, str]], model: str, chunker: str, chunk_size: int | None, overlap: int, prompt: str = ""
) -> SampleCounts:
    """Per sampled article: characters, chunks and tokens (model's tokenizer, special tokens and the
    document prompt included: the model reads the prompt's tokens with every chunk)."""
    info = model_info(model)
    chunking = make_chunking(chunker, chunk_size, overlap, info.max_tokens)
    tokenizer = load_tokenizer(model)
    table = pa.Table.from_pylist(list(rows), SNAPSHOT_SCHEMA)
    chunks = chunk_table(table, chunking, tokenizer if chunking.chunker == "tokens" else None, prompt=prompt)
    ids = chunks.column("id").to_pylist()
    index = {r["id"]: i for i, r in enumerate(rows)}
    owner = np.fromiter((index[i] for i in ids), dtype=np.int64, count=len(ids))
    texts = [prompt + t for t in chunks.column("text").to_pylist()]  # the model reads the prompt with every chunk
    lengths = np.minimum(np.diff(encode_ids(tokenizer, texts)[1]), info.max_tokens)
    n = len(rows)
    return SampleCounts(
        chars=np.fromiter((len(r["text"]) for r in rows), dtype=np.float64, count=n),
        chunks=np.bincount(owner, minlength=n).astype(np.float64),
        tokens=np.bincount(owner, weights=lengths, minlength=n).astype(np.float64),
        chunking=chunking.as_dict(),
        texts=chunks.column("text").to_pylist(),
    )
