"""How a text is cut into chunks: the chars chunker, the token chunker, and their chunks as flat arrays.

Both keep `text == article[char_start:char_end]` for every chunk and cover every non-blank
character of the article:
- `chars` (`chunk_chars`): fixed windows of N characters, no overlap (parity with the original
  write-up; a window may exceed the model's token limit: the local engine then cuts it to the
  limit, a TEI server refuses it).
- `tokens` (`TokenChunker`, the default): windows counted in the model's own tokenizer, never
  above its max sequence length (special tokens included), cut at paragraph, then sentence, then
  word boundaries; optional overlap in tokens.

`ChunkArrays` holds the chunks of many texts as flat arrays (cheap to pickle between processes).
Running them on every core and writing a shard's chunk file: `wikiembed.chunk_files`.

Touches: nothing (pure functions of the texts and the tokenizer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from wikiembed.errors import InputError
from wikiembed.fast_tokenizer import TokenizerChoice, fast_wordpiece
from wikiembed.tokenizing import spec

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


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def chunk_chars(text: str, size: int) -> list[tuple[int, int]]:
    """Fixed windows of `size` characters: `[k*size, (k+1)*size)`, whitespace-trimmed, blank ones dropped."""
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
    """Token-budget chunking with the model's own fast tokenizer; also returns each chunk's token ids.

    Cuts only before a token that starts a pre-tokenizer word, so each side
    re-tokenizes to exactly the tokens it held (for WordPiece/BERT-style
    tokenizers; others are re-checked and re-tokenized). Budget = chunk_size
    minus the special tokens the model adds; a chunk's ids carry those special
    tokens, so they are exactly what the model's tokenizer gives for its text.

    With a document `prompt` (e5's "passage: ", an instruction), a chunk's ids are what the
    tokenizer gives for `prompt + text`, the model's whole input, and the prompt's tokens count
    against the budget, so prompt and chunk fit the model's limit together. Where the prompt
    ends at a word boundary of a BERT-style tokenizer, its tokens are put in front of each chunk's;
    anywhere else each chunk is tokenized again with its prompt, and its length checked.

    Per token the work is numpy only: word starts come from a table of the
    vocabulary's continuation pieces (`##...`), and the few character offsets
    a chunk needs (its own edges, the paragraph and sentence breaks) are
    looked up one by one instead of converting every token's offsets.
    """

    def __init__(
        self, tokenizer, chunk_size: int, overlap: int = 0, which: TokenizerChoice | None = None, prompt: str = ""
    ) -> None:
        self.tokenizer = tokenizer
        self.specials = tokenizer.num_special_tokens_to_add(False)
        self.prompt = prompt
        prompt_ids = np.asarray(tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else [], dtype=np.int32)
        self.limit = chunk_size - self.specials  # tokens of prompt + text a chunk may hold
        self.budget = self.limit - len(prompt_ids)  # of which the text's
        self.overlap = overlap
        if self.budget < 4:
            raise InputError(
                f"--chunk-size {chunk_size}: leaves {self.budget} tokens after special tokens"
                + (f" and the {len(prompt_ids)}-token prompt {prompt!r}" if prompt else "")
                + "; use more."
            )
        pre = tokenizer.pre_tokenizer
        model = tokenizer.model
        # BERT's pre-tokenizer splits on whitespace and punctuation only, and its
        # normalizer is per character: cuts at word starts are then exact.
        self.exact = (
            pre is not None and type(pre).__name__ == "BertPreTokenizer" and type(model).__name__ == "WordPiece"
        )
        # BertPreTokenizer ends a word at whitespace and punctuation: a prompt ending there
        # tokenizes the same alone as in front of any text, so its tokens can be put in front.
        if prompt and self.exact and not (prompt[-1].isspace() or _is_bert_punctuation(prompt[-1])):
            self.exact = False
        self.prefix, self.suffix = _special_ids(tokenizer)
        if self.exact and prompt:
            self.prefix = np.concatenate([self.prefix, prompt_ids])
        self.spec = spec(tokenizer)  # what a worker process rebuilds the tokenizer from
        if self.exact:
            # A WordPiece token continues a word iff it carries the continuation prefix.
            mark = model.continuing_subword_prefix
            vocab = tokenizer.get_vocab(with_added_tokens=True)
            self.continues = np.zeros(max(vocab.values()) + 1, dtype=bool)
            self.continues[[i for tok, i in vocab.items() if tok.startswith(mark)]] = True
        # blingfire where it gives exactly the tokenizer's ids and offsets (wikiembed/fast_tokenizer.py).
        self.fast = fast_wordpiece(tokenizer, which) if self.exact else None

    def chunk_many(self, texts: Sequence[str]) -> "ChunkArrays":
        """Every chunk of every text, in text then chunk order."""
        pieces: list[tuple[int, int, int]] = []  # (text index, seg start, seg end)
        for t, text in enumerate(texts):
            pieces.extend((t, s, e) for s, e in _segments(text))
        spans: list[list[tuple[int, int]]] = [[] for _ in texts]
        ids: list[list[np.ndarray]] = [[] for _ in texts]
        for group in _groups(pieces):
            group_texts = [texts[t][s:e] for t, s, e in group]
            if self.fast:
                encs = self.fast.encode_batch(group_texts)
            else:
                encs = self.tokenizer.encode_batch(group_texts, add_special_tokens=False)
            for (t, s, e), enc in zip(group, encs):
                if self.exact:
                    self._cut_exact(texts[t], s, e, enc, spans[t], ids[t])
                else:
                    spans[t].extend(self._cut(texts[t], s, e, enc))
        if not self.exact:
            spans = [self._verify(text, found) for text, found in zip(texts, spans)]
            ids = self._encode_chunks(texts, spans)
        return ChunkArrays.build(spans, ids, self.prefix, self.suffix)

    def _cut_exact(self, text: str, seg_start: int, seg_end: int, enc, spans: list, ids_out: list) -> None:
        token_ids = np.asarray(enc.ids, dtype=np.int32)
        m = len(token_ids)
        if m <= self.budget:  # one chunk (most articles): no break to look for
            s, e = _strip_span(text, seg_start, seg_end)
            if e > s:
                spans.append((s, e))
                ids_out.append(token_ids)
            return
        word_start = ~self.continues[token_ids]
        seg = text[seg_start:seg_end]
        para = _break_tokens(enc, (mt.end() for mt in _PARA_RE.finditer(seg)), len(seg), word_start)

        def sentences() -> np.ndarray:
            return _break_tokens(enc, (mt.end() for mt in _SENT_RE.finditer(seg)), len(seg), word_start)

        for a, b in self._bounds(m, para, sentences, np.flatnonzero(word_start)):
            cs = seg_start if a == 0 else seg_start + enc.token_to_chars(a)[0]
            ce = seg_end if b == m else seg_start + enc.token_to_chars(b)[0]
            s, e = _strip_span(text, cs, ce)
            if e > s:
                spans.append((s, e))
                ids_out.append(token_ids[a:b])

    def _bounds(
        self, m: int, para: np.ndarray, sentences: Callable[[], np.ndarray], words: np.ndarray
    ) -> list[tuple[int, int]]:
        """Token ranges `[a, b)` of the chunks of a segment of `m` tokens.

        Each chunk ends at the last paragraph break in the second half of its
        budget, else the last sentence break there (found only when first
        needed: most windows hold a paragraph break), else the last word start.
        """
        bounds: list[tuple[int, int]] = []
        sent: np.ndarray | None = None
        i, budget = 0, self.budget
        while True:
            if m - i <= budget:
                bounds.append((i, m))
                return bounds
            hi = i + budget
            lo = i + int(budget * _MIN_FILL)
            k = _last_in(para, lo, hi)
            if not k:
                if sent is None:
                    sent = sentences()
                k = _last_in(sent, lo, hi) or _last_in(words, i, hi) or hi
            bounds.append((i, k))
            nxt = k
            if self.overlap:
                back = _last_in(words, i, k - self.overlap)
                nxt = back if back and back > i else k
            i = nxt

    def _cut(self, text: str, seg_start: int, seg_end: int, enc) -> list[tuple[int, int]]:
        """Spans of one segment for tokenizers whose cuts are re-checked (word starts from `word_ids`)."""
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

        def sentences() -> np.ndarray:
            return _token_positions(starts, seg_start, (mt.end() for mt in _SENT_RE.finditer(seg)), word_start)

        spans = []
        for a, b in self._bounds(m, para, sentences, np.flatnonzero(word_start)):
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
            encs = self.tokenizer.encode_batch([self.prompt + text[s:e] for s, e in todo], add_special_tokens=False)
            again = []
            for (s, e), enc in zip(todo, encs):
                if len(enc.ids) <= self.limit or e - s < 2:
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

    def _encode_chunks(self, texts: Sequence[str], spans: list[list[tuple[int, int]]]) -> list[list[np.ndarray]]:
        """Token ids of each chunk's own text, after its prompt (where cuts are not exact, the chunk is what gets tokenized)."""
        flat = [self.prompt + texts[t][s:e] for t, found in enumerate(spans) for s, e in found]
        encs = self.tokenizer.encode_batch(flat, add_special_tokens=False) if flat else []
        it = iter(encs)
        return [[np.asarray(next(it).ids, dtype=np.int32) for _ in found] for found in spans]


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


def _is_bert_punctuation(char: str) -> bool:
    """Punctuation as BertPreTokenizer splits on it: ASCII symbols and Unicode P* categories."""
    import unicodedata

    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _special_ids(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """The ids the tokenizer puts before and after a single text (`[CLS]` and `[SEP]` for BERT)."""
    probe = "a"
    bare = tokenizer.encode(probe, add_special_tokens=False).ids
    full = tokenizer.encode(probe, add_special_tokens=True).ids
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return np.asarray(full[:i], dtype=np.int32), np.asarray(full[i + len(bare) :], dtype=np.int32)
    raise InputError(
        "the model's tokenizer puts its special tokens inside the text it encodes; "
        "use --chunker chars with this model."
    )


def _break_tokens(enc, char_positions: Iterator[int], seg_len: int, word_start: np.ndarray) -> np.ndarray:
    """Token indices (word starts only) of the first token at or after each char position of a segment.

    A break position is where a paragraph or sentence begins: a token starts
    there unless the tokenizer's normalizer drops that character (a control
    or format character), in which case the next token is the one.
    """
    found = []
    for pos in char_positions:
        while pos < seg_len:
            token = enc.char_to_token(pos)
            if token is not None:
                if enc.token_to_chars(token)[0] < pos:  # pos sits inside a token: the next one starts after it
                    token += 1
                found.append(token)
                break
            pos += 1
    idx = np.asarray(found, dtype=np.int64)
    idx = idx[(idx > 0) & (idx < len(word_start))]
    return np.unique(idx[word_start[idx]])


@dataclass
class ChunkArrays:
    """Chunks of a list of texts as flat arrays: cheap to pickle between processes and to turn into arrow."""

    counts: np.ndarray  # chunks per text
    starts: np.ndarray  # char_start of each chunk
    ends: np.ndarray  # char_end of each chunk
    ids: np.ndarray | None  # every chunk's token ids (special tokens included), concatenated; int32
    id_offsets: np.ndarray | None  # chunk j's ids are ids[id_offsets[j]:id_offsets[j + 1]]

    @classmethod
    def build(
        cls,
        spans: list[list[tuple[int, int]]],
        ids: list[list[np.ndarray]] | None = None,
        prefix: np.ndarray | None = None,
        suffix: np.ndarray | None = None,
    ) -> ChunkArrays:
        counts = np.fromiter((len(s) for s in spans), dtype=np.int64, count=len(spans))
        flat = [span for found in spans for span in found]
        starts = np.fromiter((s for s, _ in flat), dtype=np.int64, count=len(flat))
        ends = np.fromiter((e for _, e in flat), dtype=np.int64, count=len(flat))
        if ids is None:
            return cls(counts, starts, ends, None, None)
        pre = np.zeros(0, np.int32) if prefix is None else prefix
        post = np.zeros(0, np.int32) if suffix is None else suffix
        lengths = np.fromiter((len(x) for chunk_ids in ids for x in chunk_ids), dtype=np.int64, count=len(flat))
        pieces = [part for chunk_ids in ids for x in chunk_ids for part in (pre, x, post)]
        values = np.concatenate(pieces).astype(np.int32, copy=False) if pieces else np.zeros(0, np.int32)
        offsets = np.zeros(len(flat) + 1, dtype=np.int64)
        np.cumsum(lengths + len(pre) + len(post), out=offsets[1:])
        return cls(counts, starts, ends, values, offsets)

    @classmethod
    def concat(cls, parts: Sequence[ChunkArrays]) -> ChunkArrays:
        if not parts:
            return cls.build([])
        counts = np.concatenate([p.counts for p in parts])
        starts = np.concatenate([p.starts for p in parts])
        ends = np.concatenate([p.ends for p in parts])
        if parts[0].ids is None:
            return cls(counts, starts, ends, None, None)
        ids = np.concatenate([p.ids for p in parts])
        bases = np.cumsum([0] + [len(p.ids) for p in parts[:-1]])
        offsets = np.concatenate([np.zeros(1, np.int64)] + [p.id_offsets[1:] + base for p, base in zip(parts, bases)])
        return cls(counts, starts, ends, ids, offsets)
