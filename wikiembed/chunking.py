"""The shard step: a fixed plan of row ranges, and the chunkers that cut articles.

The plan is a pure function of the row count and `shard_rows`, so shard k
always means the same rows for a given source fingerprint (`plan_shards`,
`make_chunking`: here). The chunkers (`chars`, `tokens`) and their flat arrays
are `wikiembed.chunkers`; running them on every core and writing a shard's
chunk file `chunks/NNNNN.parquet` (byte-identical when written twice) is
`wikiembed.chunk_files`. Their public names are importable from here too.

Touches: nothing itself (see the two modules).
"""

from __future__ import annotations

from wikiembed.chunk_files import (  # noqa: F401 (re-exported)
    CHUNK_ROW_GROUP,
    CHUNK_SCHEMA,
    TOKEN_CHUNK_SCHEMA,
    chunk_schema,
    chunk_shard,
    chunk_shard_parts,
    chunk_table,
    chunk_tables,
    chunk_texts,
    write_parquet_atomic,
)
from wikiembed.chunkers import ChunkArrays, TokenChunker, chunk_chars  # noqa: F401 (re-exported)
from wikiembed.errors import InputError
from wikiembed.records import Chunking


def make_chunking(chunker: str, chunk_size: int | None, chunk_overlap: int, max_tokens: int) -> Chunking:
    """Validate chunking options against the model; defaults fill in the model's limit."""
    if chunker not in ("tokens", "chars"):
        raise InputError(f"--chunker {chunker!r}: use 'tokens' (default) or 'chars'.")
    if chunker == "tokens":
        size = chunk_size or min(256, max_tokens)
        if size > max_tokens:
            raise InputError(
                f"--chunk-size {size}: above the model's max sequence length {max_tokens} tokens; "
                f"use --chunk-size {max_tokens} or less."
            )
        if size < 8:
            raise InputError(f"--chunk-size {size}: too small; use at least 8 tokens.")
    else:
        size = chunk_size or 512
        if size < 1:
            raise InputError(f"--chunk-size {size}: must be at least 1 character.")
    if chunk_overlap < 0 or chunk_overlap >= size // 2:
        raise InputError(f"--chunk-overlap {chunk_overlap}: must be between 0 and {size // 2 - 1} (half the chunk size).")
    return Chunking(chunker, size, chunk_overlap)


def plan_shards(rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """Contiguous `[start, end)` row ranges of at most `shard_rows` rows."""
    if shard_rows < 1:
        raise InputError(f"--shard-rows {shard_rows}: must be at least 1.")
    return [(start, min(start + shard_rows, rows)) for start in range(0, rows, shard_rows)]
