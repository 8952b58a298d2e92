"""The shard step: a fixed plan of row ranges, and the chunkers that cut articles.

The plan is a pure function of the row count and `shard_rows`, so shard k
always means the same rows for a given source fingerprint. Each shard's
chunks go to `chunks/NNNNN.parquet`; writing the same shard twice gives a
byte-identical file.

Chunkers keep `text == article[char_start:char_end]` for every chunk and cover
every non-blank character of the article:
- `chars`: the seed's fixed windows of N characters, no overlap (parity mode;
  windows may exceed the model's token limit and are then truncated by the
  backend, which the summary counts as `over_limit_chunks`).
- `tokens` (default): windows counted in the model's own tokenizer, never
  above its max sequence length (special tokens included), cut at paragraph,
  then sentence, then word boundaries; optional overlap in tokens.

Touches: the snapshot (read) and `STORE/chunks/` (temp + rename).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wikiembed.sources import read_snapshot_rows
from wikiembed.errors import InputError
from wikiembed.model import load_tokenizer
from wikiembed.store import Store, sha256_file, store_os_error

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
# Articles are tokenized in groups: big enough for tokenizers' parallel
# encode_batch, small enough that the Encoding objects (~130 bytes per character
# of input, measured) stay bounded: at most this many pieces and characters.
TOKENIZE_GROUP = 256
TOKENIZE_GROUP_CHARS = 400_000
# Very long articles are cut at line breaks into segments before tokenizing, so a
# 10 MB article never becomes millions of Encoding entries at once (a segment
# edge is also a chunk edge: it falls on a line break where one exists).
SEGMENT_CHARS = 50_000
# A chunk should not end before half its budget when a better break exists later.
_MIN_FILL = 0.5
_PARA_RE = re.compile(r"\n\s*")
_SENT_RE = re.compile(r"[.!?。！？][\"'”’)\]]*\s+")


@dataclass(frozen=True)
class Chunking:
    """How articles become chunks; part of the store's identity."""

    chunker: str = "tokens"
    chunk_size: int = 256  # tokens (special tokens included) or characters
    chunk_overlap: int = 0

    def as_dict(self) -> dict:
        return {"chunker": self.chunker, "chunk_size": self.chunk_size, "chunk_overlap": self.chunk_overlap}


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


# ---- chunkers ---------------------------------------------------------------------


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def chunk_chars(text: str, size: int) -> list[tuple[int, int]]:
    """The seed's fixed windows: `[k*size, (k+1)*size)`, whitespace-trimmed, blank ones dropped."""
    spans = []
    for start in range(0, len(text), size):
        s, e = _strip_span(text, start, min(start + size, len(text)))
        if e > s:
            spans.append((s, e))
    return spans


def _segments(text: str) -> list[tuple[int, int]]:
    """Cut very long text at line breaks (or spaces) into pieces of at most ~SEGMENT_CHARS."""
    if len(text) <= SEGMENT_CHARS:
        return [(0, len(text))]
    out, start = [], 0
    while len(text) - start > SEGMENT_CHARS:
        limit = start + SEGMENT_CHARS
        cut = text.rfind("\n", start + SEGMENT_CHARS // 2, limit)
        if cut < 0:
            cut = text.rfind(" ", start + SEGMENT_CHARS // 2, limit)
        cut = limit if cut < 0 else cut + 1
        out.append((start, cut))
        start = cut
    out.append((start, len(text)))
    return out


class TokenChunker:
    """Token-budget chunking with the model's own fast tokenizer.

    Cuts only before a token that starts a pre-tokenizer word, so each side
    re-tokenizes to exactly the tokens it held (for WordPiece/BERT-style
    tokenizers; others are re-checked). Budget = chunk_size minus the
    special tokens the model adds.
    """

    def __init__(self, tokenizer, chunk_size: int, overlap: int = 0) -> None:
        self.tokenizer = tokenizer
        self.specials = tokenizer.num_special_tokens_to_add(False)
        self.budget = chunk_size - self.specials
        self.overlap = overlap
        if self.budget < 4:
            raise InputError(f"--chunk-size {chunk_size}: leaves {self.budget} tokens after special tokens; use more.")
        pre = tokenizer.pre_tokenizer
        # BERT's pre-tokenizer splits on whitespace and punctuation only, and its
        # normalizer is per character: cuts at word starts are then exact.
        self.exact = pre is not None and type(pre).__name__ == "BertPreTokenizer"

    def chunk_many(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Spans for each text, in order."""
        pieces: list[tuple[int, int, int]] = []  # (text index, seg start, seg end)
        for t, text in enumerate(texts):
            pieces.extend((t, s, e) for s, e in _segments(text))
        out: list[list[tuple[int, int]]] = [[] for _ in texts]
        for group in _groups(pieces):
            encs = self.tokenizer.encode_batch([texts[t][s:e] for t, s, e in group], add_special_tokens=False)
            for (t, s, e), enc in zip(group, encs):
                out[t].extend(self._spans(texts[t], s, e, enc))
        if not self.exact:
            out = [self._verify(text, spans) for text, spans in zip(texts, out)]
        return out

    def _spans(self, text: str, seg_start: int, seg_end: int, enc) -> list[tuple[int, int]]:
        m = len(enc.ids)
        if m == 0:
            s, e = _strip_span(text, seg_start, seg_end)
            return [(s, e)] if e > s else []
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        starts = offsets[:, 0] + seg_start
        word_ids = np.asarray([-1 if w is None else w for w in enc.word_ids], dtype=np.int64)
        word_start = np.ones(m, dtype=bool)
        word_start[1:] = word_ids[1:] != word_ids[:-1]
        seg = text[seg_start:seg_end]
        para = _token_positions(starts, seg_start, (mt.end() for mt in _PARA_RE.finditer(seg)), word_start)
        sent = _token_positions(starts, seg_start, (mt.end() for mt in _SENT_RE.finditer(seg)), word_start)
        words = np.flatnonzero(word_start)
        bounds: list[tuple[int, int]] = []
        i, budget = 0, self.budget
        while True:
            if m - i <= budget:
                bounds.append((i, m))
                break
            hi = i + budget
            lo = i + int(budget * _MIN_FILL)
            k = _last_in(para, lo, hi) or _last_in(sent, lo, hi) or _last_in(words, i, hi) or hi
            bounds.append((i, k))
            nxt = k
            if self.overlap:
                back = _last_in(words, i, k - self.overlap)
                nxt = back if back and back > i else k
            i = nxt
        spans = []
        for a, b in bounds:
            cs = seg_start if a == 0 else int(starts[a])
            ce = seg_end if b == m else int(starts[b])
            s, e = _strip_span(text, cs, ce)
            if e > s:
                spans.append((s, e))
        return spans

    def _verify(self, text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """For non-BERT tokenizers: re-count each chunk and split any that came out over budget."""
        out: list[tuple[int, int]] = []
        todo = list(spans)
        while todo:
            encs = self.tokenizer.encode_batch([text[s:e] for s, e in todo], add_special_tokens=False)
            again = []
            for (s, e), enc in zip(todo, encs):
                if len(enc.ids) <= self.budget or e - s < 2:
                    out.append((s, e))
                    continue
                mid = text.rfind(" ", s + 1, (s + e) // 2 + 1)
                mid = (s + e) // 2 if mid <= s else mid
                for a, b in ((s, mid), (mid, e)):
                    a, b = _strip_span(text, a, b)
                    if b > a:
                        again.append((a, b))
            todo = again
        return sorted(out)


def _groups(pieces: list[tuple[int, int, int]]) -> Iterator[list[tuple[int, int, int]]]:
    """Consecutive pieces, at most TOKENIZE_GROUP of them and TOKENIZE_GROUP_CHARS characters a group."""
    group: list[tuple[int, int, int]] = []
    chars = 0
    for piece in pieces:
        size = piece[2] - piece[1]
        if group and (len(group) == TOKENIZE_GROUP or chars + size > TOKENIZE_GROUP_CHARS):
            yield group
            group, chars = [], 0
        group.append(piece)
        chars += size
    if group:
        yield group


def _token_positions(starts: np.ndarray, base: int, char_positions: Iterator[int], word_start: np.ndarray) -> np.ndarray:
    """Token indices (word starts only) of the tokens beginning at or after each char position."""
    pos = np.fromiter((base + p for p in char_positions), dtype=np.int64)
    if pos.size == 0:
        return pos
    idx = np.searchsorted(starts, pos, side="left")
    idx = idx[(idx > 0) & (idx < len(starts))]
    return np.unique(idx[word_start[idx]])


def _last_in(candidates: np.ndarray, lo: int, hi: int) -> int:
    """Largest candidate in `(lo, hi]`, or 0 when there is none."""
    j = np.searchsorted(candidates, hi, side="right") - 1
    if j >= 0 and candidates[j] > lo:
        return int(candidates[j])
    return 0


def chunk_table(rows: pa.Table, chunking: Chunking, tokenizer=None) -> pa.Table:
    """All chunks of a table of articles (`id, url, title, text`), in row then chunk order."""
    texts = rows.column("text").to_pylist()
    if chunking.chunker == "chars":
        spans_per_text = [chunk_chars(t, chunking.chunk_size) for t in texts]
    else:
        if tokenizer is None:
            raise ValueError("the tokens chunker needs the model's tokenizer")
        chunker = TokenChunker(tokenizer, chunking.chunk_size, chunking.chunk_overlap)
        spans_per_text = chunker.chunk_many(texts)
    counts = np.fromiter((len(s) for s in spans_per_text), dtype=np.int64, count=len(texts))
    take = np.repeat(np.arange(len(texts)), counts)
    flat = [span for spans in spans_per_text for span in spans]
    starts = np.fromiter((s for s, _ in flat), dtype=np.int64, count=len(flat))
    ends = np.fromiter((e for _, e in flat), dtype=np.int64, count=len(flat))
    chunk_index = np.concatenate([np.arange(c, dtype=np.int32) for c in counts]) if len(flat) else np.zeros(0, np.int32)
    chunk_text = [texts[t][s:e] for t, (s, e) in zip(take.tolist(), flat)]
    # Only the small columns are repeated per chunk (taking `text` too would copy a long
    # article once per chunk: hundreds of MB for Wikipedia's longest pages).
    picked = rows.select(["id", "url", "title"]).take(pa.array(take, type=pa.int64()))
    return pa.Table.from_arrays(
        [
            picked.column("id"),
            picked.column("url"),
            picked.column("title"),
            pa.array(chunk_index, type=pa.int32()),
            pa.array(starts, type=pa.int64()),
            pa.array(ends, type=pa.int64()),
            pa.array(chunk_text, type=pa.string()),
        ],
        schema=CHUNK_SCHEMA,
    )


def write_parquet_atomic(table: pa.Table, dest: Path, row_group_size: int = 8192) -> None:
    """Write to a hidden temp name, fsync, then rename: readers never see a partial file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def chunk_shard(store: Store, shard: int, manifest: dict) -> dict:
    """Cut shard `shard`'s rows into `chunks/NNNNN.parquet`; returns `{"chunks", "sha256"}`.

    Deterministic: the same snapshot rows and chunking give a byte-identical file,
    so a rerun after a kill rewrites exactly what was there.
    """
    start, end = manifest["plan"]["shards"][shard]
    chunking = Chunking(**manifest["chunking"])
    rows = read_snapshot_rows(store.snapshot_path, start, end)
    tokenizer = load_tokenizer(manifest["model"]["model_id"]) if chunking.chunker == "tokens" else None
    table = chunk_table(rows, chunking, tokenizer)
    dest = store.chunks_path(shard)
    try:
        write_parquet_atomic(table, dest)
        return {"chunks": table.num_rows, "sha256": sha256_file(dest)}
    except OSError as exc:
        raise store_os_error(exc, dest) from exc
