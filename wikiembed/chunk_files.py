"""Articles to chunk rows on every core, and a shard's chunk file `chunks/NNNNN.parquet`.

`chunk_texts` / `chunk_tables` / `chunk_table` run the chunkers (`wikiembed.chunkers`) on the
worker processes for a large input (`wikiembed.tokenizing.run_parts`); the result does not
depend on how many: every text is chunked on its own. `chunk_shard_parts` / `chunk_shard` cut a
shard's snapshot rows into its chunk file; writing the same shard twice gives a byte-identical
file.

Touches: the snapshot (read) and `STORE/chunks/` (through `wikiembed.atomic`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wikiembed.atomic import atomic_path
from wikiembed.chunkers import ChunkArrays, TokenChunker, chunk_chars
from wikiembed.fast_tokenizer import TokenizerChoice, choice
from wikiembed.model import load_tokenizer
from wikiembed.records import Chunking, Manifest
from wikiembed.sources import read_snapshot_rows
from wikiembed.store import Store, sha256_file, store_os_error
from wikiembed.tokenizing import cores, run_parts, tokenizer_from_spec

CHUNK_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("url", pa.string()),
        ("title", pa.string()),
        ("chunk_index", pa.int32()),
        ("char_start", pa.int64()),
        ("char_end", pa.int64()),
        ("text", pa.string()),
    ]
)
# The token chunker's files also carry each chunk's token ids (special tokens included):
# the local engine embeds them as they are, so each character is tokenized once.
TOKEN_CHUNK_SCHEMA = CHUNK_SCHEMA.append(pa.field("input_ids", pa.list_(pa.int32())))


# ---- every core: chunking in worker processes ---------------------------------------

# Tables with fewer characters are chunked in this process: starting the workers
# (about a second, once per process) and shipping the text would cost more than they save.
PARALLEL_MIN_CHARS = 300_000
# Characters per part sent to a worker: small enough that every worker gets
# several (a long article still travels whole), large enough that a part's
# fixed cost (pickling, one round trip) is far below its tokenizing time.
PART_CHARS = 1_000_000


_CHUNKERS: dict[tuple, TokenChunker] = {}


def _chunker(tokenizer, chunk_size: int, overlap: int, which: TokenizerChoice, prompt: str = "") -> TokenChunker:
    """A chunker per (tokenizer, size, overlap, tokenizer choice, prompt), made once per process: making
    one reads the whole vocabulary (~0.1 s), which would otherwise be paid again for every part."""
    key = (id(tokenizer), chunk_size, overlap, which, prompt)
    found = _CHUNKERS.get(key)
    if found is None or found.tokenizer is not tokenizer:
        if len(_CHUNKERS) >= 8:
            _CHUNKERS.clear()
        found = _CHUNKERS[key] = TokenChunker(tokenizer, chunk_size, overlap, which, prompt)
    return found


def _chunk_part(
    tokenizer_spec: str, chunk_size: int, overlap: int, which: TokenizerChoice, prompt: str, texts: list[str]
) -> ChunkArrays:
    """Worker body: chunk `texts` with the tokenizer `tokenizer_spec` describes (`which`: the caller's choice)."""
    return _chunker(tokenizer_from_spec(tokenizer_spec), chunk_size, overlap, which, prompt).chunk_many(texts)


def _parts(texts: Sequence[str], part_chars: int) -> list[tuple[int, int]]:
    """Contiguous `[start, end)` ranges of texts holding about `part_chars` characters each."""
    out, start, chars = [], 0, 0
    for i, text in enumerate(texts):
        chars += len(text)
        if chars >= part_chars:
            out.append((start, i + 1))
            start, chars = i + 1, 0
    if start < len(texts):
        out.append((start, len(texts)))
    return out


def _chunk_parts(
    texts: Sequence[str], chunking: Chunking, tokenizer=None, workers: int | None = None, prompt: str = ""
) -> Iterator[tuple[int, int, ChunkArrays]]:
    """`(start, end, chunks of texts[start:end])` for consecutive parts of `texts`, in order.

    Token chunking of a large input runs on the worker processes, which chunk the parts
    after the one being yielded while the caller uses it. The chunks do not depend on
    `workers` or on where parts are cut: every text is chunked on its own.
    """
    if chunking.chunker == "chars":
        yield 0, len(texts), ChunkArrays.build([chunk_chars(t, chunking.chunk_size) for t in texts])
        return
    if tokenizer is None:
        raise ValueError("the tokens chunker needs the model's tokenizer")
    workers = cores() if workers is None else workers
    which = choice()
    chunker = _chunker(tokenizer, chunking.chunk_size, chunking.chunk_overlap, which, prompt)  # bad options fail here, not in a worker
    total = sum(map(len, texts))
    if workers < 2 or total < PARALLEL_MIN_CHARS:
        yield 0, len(texts), chunker.chunk_many(texts)
        return
    part_chars = max(min(PART_CHARS, total // (4 * workers)), 1)
    bounds = _parts(texts, part_chars)
    parts = [(chunker.spec, chunking.chunk_size, chunking.chunk_overlap, which, prompt, list(texts[a:b])) for a, b in bounds]
    for (a, b), found in zip(bounds, run_parts(_chunk_part, parts, workers)):
        yield a, b, found


def chunk_texts(
    texts: Sequence[str], chunking: Chunking, tokenizer=None, workers: int | None = None, prompt: str = ""
) -> ChunkArrays:
    """The chunks of `texts` as flat arrays; token chunking runs on every core for large inputs.

    The result does not depend on `workers`: every text is chunked on its own. `prompt`: the
    model's document prompt, which the token chunker counts and puts in front of each chunk's ids.
    """
    return ChunkArrays.concat([found for _, _, found in _chunk_parts(texts, chunking, tokenizer, workers, prompt)])


def _rows_table(rows: pa.Table, texts: Sequence[str], found: ChunkArrays) -> pa.Table:
    """The chunk rows of the articles `rows` (whose texts are `texts`), given their chunks."""
    take = np.repeat(np.arange(len(texts)), found.counts)
    chunk_index = (
        np.arange(len(take), dtype=np.int64) - np.repeat(np.cumsum(found.counts) - found.counts, found.counts)
    ).astype(np.int32)
    chunk_text = [texts[t][s:e] for t, s, e in zip(take.tolist(), found.starts.tolist(), found.ends.tolist())]
    # Only the small columns are repeated per chunk (taking `text` too would copy a long
    # article once per chunk: hundreds of MB for Wikipedia's longest pages).
    picked = rows.select(["id", "url", "title"]).take(pa.array(take, type=pa.int64()))
    columns = [
        picked.column("id"),
        picked.column("url"),
        picked.column("title"),
        pa.array(chunk_index, type=pa.int32()),
        pa.array(found.starts, type=pa.int64()),
        pa.array(found.ends, type=pa.int64()),
        pa.array(chunk_text, type=pa.string()),
    ]
    if found.ids is None:
        return pa.Table.from_arrays(columns, schema=CHUNK_SCHEMA)
    ids = pa.ListArray.from_arrays(pa.array(found.id_offsets.astype(np.int32)), pa.array(found.ids, type=pa.int32()))
    return pa.Table.from_arrays([*columns, ids], schema=TOKEN_CHUNK_SCHEMA)


def chunk_schema(chunking: Chunking) -> pa.Schema:
    """The columns of a chunk file: the token chunker's carry each chunk's token ids."""
    return TOKEN_CHUNK_SCHEMA if chunking.chunker == "tokens" else CHUNK_SCHEMA


def chunk_tables(
    rows: pa.Table, chunking: Chunking, tokenizer=None, workers: int | None = None, prompt: str = ""
) -> Iterator[pa.Table]:
    """`chunk_table`'s rows part by part, in order: while the caller uses one part, the
    worker processes chunk the next ones (a GPU embeds part k as part k + 1 is cut)."""
    texts = rows.column("text").to_pylist()
    for start, end, found in _chunk_parts(texts, chunking, tokenizer, workers, prompt):
        yield _rows_table(rows.slice(start, end - start), texts[start:end], found)


def chunk_table(
    rows: pa.Table, chunking: Chunking, tokenizer=None, workers: int | None = None, prompt: str = ""
) -> pa.Table:
    """All chunks of a table of articles (`id, url, title, text`), in row then chunk order.

    The token chunker adds `input_ids`: each chunk's token ids, special tokens
    included, exactly what the model's tokenizer gives for its text, so the
    local engine embeds them without tokenizing again. With a document `prompt`, the ids are those
    of `prompt + text` (the model's whole input) and the prompt counts against the chunk size.
    """
    tables = list(chunk_tables(rows, chunking, tokenizer, workers, prompt))
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables).combine_chunks() if tables else chunk_schema(chunking).empty_table()


# Rows per row group of a chunk file.
CHUNK_ROW_GROUP = 8192


def write_parquet_atomic(table: pa.Table, dest: Path, row_group_size: int = CHUNK_ROW_GROUP) -> None:
    """Write to a hidden temp name, fsync, then rename: readers never see a partial file."""
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size)


def chunk_shard_parts(store: Store, shard: int, manifest: Manifest, workers: int | None = None) -> Iterator[pa.Table]:
    """Cut shard `shard`'s rows into `chunks/NNNNN.parquet`, yielding each part's chunks as soon as
    it is cut (worker processes cut the next parts meanwhile), so a caller can embed while the
    shard is still being chunked. `workers`: as `chunk_texts` (1: in this process, for a caller
    that is already one of several processes).

    The file is written as the parts go, in fixed row groups, and put in place once the last
    part has been yielded: it is byte-identical to what `chunk_shard` writes. Closing the
    iterator early (or an error) leaves no file behind.
    """
    start, end = manifest.plan.shards[shard]
    chunking = manifest.chunking
    rows = read_snapshot_rows(store.snapshot_path, start, end)
    tokenizer = load_tokenizer(manifest.model.model_id) if chunking.chunker == "tokens" else None
    schema = chunk_schema(chunking)
    dest = store.chunks_path(shard)
    try:
        with atomic_path(dest) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            # Row groups of exactly CHUNK_ROW_GROUP rows whatever the parts' sizes, each one
            # contiguous: the same file as one write_table of the whole shard.
            pending: list[pa.Table] = []
            held = written = 0
            for table in chunk_tables(rows, chunking, tokenizer, workers, manifest.model.document_prompt):
                pending.append(table)
                held += table.num_rows
                while held >= CHUNK_ROW_GROUP:
                    joined = pa.concat_tables(pending)
                    writer.write_table(joined.slice(0, CHUNK_ROW_GROUP).combine_chunks())
                    pending, held, written = [joined.slice(CHUNK_ROW_GROUP)], held - CHUNK_ROW_GROUP, written + 1
                yield table
            if held or not written:
                writer.write_table(pa.concat_tables(pending).combine_chunks() if pending else schema.empty_table())
    except OSError as exc:
        raise store_os_error(exc, dest) from exc


def chunk_shard(store: Store, shard: int, manifest: Manifest) -> dict:
    """Cut shard `shard`'s rows into `chunks/NNNNN.parquet`; returns `{"chunks", "sha256"}`.

    Deterministic: the same snapshot rows and chunking give a byte-identical file,
    so a rerun after a kill rewrites exactly what was there.
    """
    chunks = sum(table.num_rows for table in chunk_shard_parts(store, shard, manifest))
    dest = store.chunks_path(shard)
    try:
        return {"chunks": chunks, "sha256": sha256_file(dest)}
    except OSError as exc:
        raise store_os_error(exc, dest) from exc
