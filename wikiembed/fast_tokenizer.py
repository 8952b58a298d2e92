"""A fast path for BERT-uncased WordPiece tokenizing, with exactly the ids of Hugging Face `tokenizers`.

On a GPU machine the tokenizer, not the GPU, limits how fast text is embedded. blingfire (Microsoft's
finite-state tokenizer) ships a compiled BERT-uncased WordPiece model that tokenizes English text
several times faster per core than `tokenizers`, with the same vocabulary. It is not a drop-in
replacement: on some characters and settings the two differ (about 13,000 of the 145,000
assigned code points are left out: Hangul syllables, which BERT's normalizer decomposes, and
control, format and combining characters, among others; blingfire never gives
`[UNK]` for a word over 100 characters, and does not match added tokens such as a literal `[CLS]`). So `tokenizers` stays the reference, and a text takes
the fast path only where the two are proven to agree:

- the model's tokenizer must be the one blingfire reproduces: BertNormalizer (clean text, CJK
  spacing, lowercase, accents stripped), BertPreTokenizer, WordPiece with `[UNK]`, `##` and
  100-character words, and the vocabulary of `bert-base-uncased` (checked by hash). Anything else
  (another vocabulary, cased, SentencePiece, byte-level BPE) gets `None` here and uses `tokenizers`;
- inside a text, every whitespace-delimited run that holds a character outside the safe set
  (`SAFE_RANGES`) or an added token's text is tokenized by `tokenizers`, the rest by blingfire;
  where blingfire's output holds a word over 100 characters (tokenizers gives it one `[UNK]`),
  the runs of over 100 characters are tokenized by `tokenizers` too. Cutting at spaces, tabs and
  line breaks is exact for BERT: its normalizer works per character and its pre-tokenizer splits
  there, so the ids of a text are the ids of its runs in order (the token chunker relies on the
  same fact). For the same reason texts are sent to blingfire joined by line breaks, many per call.

`SAFE_RANGES` (wikiembed/fast_tokenizer_chars.py) lists the characters on which both give the same
ids and offsets in every context tried; `tests/wikiembed/test_fast_tokenizer.py` derives it, proves
it against both libraries, and regenerates it. A short self-check runs when a fast tokenizer is
made: if the installed `tokenizers` or blingfire ever disagrees on it, the fast path is not used.

Why blingfire (0.1.8): MIT licence; one wheel for every Python 3 (a ctypes wrapper over a C++
library, prebuilt for Linux x86-64, macOS x86-64 and Windows; where its library cannot load, e.g.
Linux ARM, importing it fails and `tokenizers` is used); no dependency beyond numpy; used by
Microsoft in Bing. Its last release is from 2021, so it is treated as frozen: the proof above pins what it
does, and nothing depends on it being present (`WIKIEMBED_TOKENIZER=tokenizers`, or an absent or
unloadable blingfire, gives the same ids through `tokenizers`).

Touches: blingfire's bundled model files (read), and nothing else.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from wikiembed.fast_tokenizer_chars import SAFE_RANGES

TokenizerChoice = Literal["auto", "tokenizers"]
# Which tokenizer counts tokens: "auto" (the fast path where it applies) or "tokenizers" (always the
# reference). The run's `--tokenizer` setting sets it, so the processes a run starts inherit it.
CHOICE_ENV = "WIKIEMBED_TOKENIZER"

# sha256 of the WordPiece vocabulary (tokens in id order, one per line) of bert-base-uncased, which
# blingfire's `bert_base_tok` model holds (the test compares the two token by token).
BERT_UNCASED_VOCAB_SHA256 = "0f052197aac305fe42f378b5c61554b7bacb34b8be4af83fec2cfdcdffbc9973"
_BLINGFIRE_MODEL = "bert_base_tok.bin"
_NORMALIZER = {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "lowercase": True}
_MAX_WORD_CHARS = 100  # WordPiece's max_input_chars_per_word: a longer word is one [UNK]
# Where a text may be cut into independently tokenized runs: characters both libraries treat as
# whitespace (other whitespace is kept inside runs, which only makes runs longer: safe).
_SEPARATORS = " \t\n\r"


def _char_class(ranges: Sequence[tuple[int, int]]) -> str:
    return "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges)


# A character outside the safe set (the ASCII one scans an ASCII text several times faster).
_UNSAFE = re.compile("[^" + _char_class(SAFE_RANGES) + "]")
_UNSAFE_ASCII = re.compile("[^" + _char_class([(a, min(b, 127)) for a, b in SAFE_RANGES if a < 128]) + "]")
# A run of separators-free characters longer than WordPiece's word limit: tokenizers gives [UNK] for
# a word over the limit, blingfire does not, and a run holds at least its longest word (every safe
# character normalizes to at most one character).
_LONG_RUN = re.compile(f"[^{_SEPARATORS}]{{{_MAX_WORD_CHARS + 1},}}")
_SEPARATOR = re.compile(f"[{_SEPARATORS}]")
# Characters per call into blingfire: large enough that a call's fixed cost vanishes, small enough
# that its output buffers (12 bytes per input byte) stay a few MB.
_BATCH_CHARS = 1 << 18


def choice() -> TokenizerChoice:
    """The tokenizer choice of this process (`WIKIEMBED_TOKENIZER`, default "auto")."""
    value = os.environ.get(CHOICE_ENV, "auto")
    if value not in ("auto", "tokenizers"):
        from wikiembed.errors import InputError

        raise InputError(f"{CHOICE_ENV}={value!r}: use 'auto' (the fast path where it applies) or 'tokenizers'.")
    return value  # type: ignore[return-value]


@dataclass
class FastEncoding:
    """One text's tokens without special tokens, as `tokenizers.Encoding` offers them to the chunker:
    `ids`, and character offsets `[starts[i], ends[i])` of token i in the text."""

    ids: np.ndarray  # int32
    starts: np.ndarray  # int32 or int64
    ends: np.ndarray

    def char_to_token(self, pos: int) -> int | None:
        """The token whose characters include `pos`, or None (whitespace, dropped characters)."""
        i = int(self.starts.searchsorted(pos, side="right")) - 1
        return i if i >= 0 and int(self.ends[i]) > pos else None

    def token_to_chars(self, token: int) -> tuple[int, int]:
        return int(self.starts[token]), int(self.ends[token])


class FastWordPiece:
    """blingfire where it is proven to agree with the model's tokenizer, the tokenizer elsewhere.

    Counts the characters it tokenized and those it left to `tokenizers` (`chars`, `fallback_chars`).
    """

    def __init__(self, tokenizer: Any, lib: Any, handle: int, added: list[str], unk: int) -> None:
        from tokenizers import Tokenizer

        # A private copy without truncation or padding: runs are tokenized whole, and the caller
        # truncates the joined ids as its tokenizer would.
        self.reference = Tokenizer.from_str(tokenizer.to_str())
        self.reference.no_truncation()
        self.reference.no_padding()
        self._lib = lib
        self._handle = ctypes.c_void_p(handle)
        # blingfire does not say its calls may share a model across threads (a run's shards can be
        # chunked by two threads of one process): one call at a time.
        self._lock = threading.Lock()
        # An added token is matched in the raw text, before normalizing: runs holding one go to tokenizers.
        self._added = re.compile("|".join(map(re.escape, added))) if added else None
        vocab = self.reference.get_vocab(with_added_tokens=True)
        # By id: 1 for a "##" word piece (it continues a word), 2 for [UNK], else 0.
        self._flags = np.zeros(max(vocab.values()) + 1, dtype=np.uint8)
        self._flags[[i for token, i in vocab.items() if token.startswith("##")]] = 1
        self._flags[unk] = 2
        # A word over the length limit comes out of blingfire as [UNK] or as at least this many
        # word pieces in a row (its first piece and each "##" piece hold at most so many characters).
        first = max(len(token) for token in vocab if not token.startswith("##"))
        piece = max(len(token) - 2 for token in vocab if token.startswith("##"))
        self._long_word_pieces = b"\x01" * -(-(_MAX_WORD_CHARS + 1 - first) // piece)
        self._unk = ctypes.c_int(unk)
        self.chars = 0
        self.fallback_chars = 0
        # The special tokens the tokenizer puts around a single text ([CLS] ... [SEP] for BERT).
        bare = self.reference.encode("a", add_special_tokens=False).ids
        full = self.reference.encode("a", add_special_tokens=True).ids
        at = next((i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), None)
        self.prefix = np.asarray(full[:at] if at is not None else [], dtype=np.int32)
        self.suffix = np.asarray(full[at + len(bare) :] if at is not None else [], dtype=np.int32)
        self.wraps = at is not None  # False: the specials sit inside the text; encode_ids is not offered

    def fallback_runs(self, text: str) -> list[tuple[int, int]]:
        """`[start, end)` of the whitespace-delimited runs of `text` that hold a character outside the
        safe set or an added token's text: `tokenizers` tokenizes them. (Words over the length limit
        are found in blingfire's output instead, see `_fast`.)"""
        unsafe = _UNSAFE_ASCII if text.isascii() else _UNSAFE
        spots = [m.start() for m in unsafe.finditer(text)]
        if self._added is not None:
            spots += [m.start() for m in self._added.finditer(text)]
        return _runs_at(text, sorted(spots)) if spots else []

    def encode(self, text: str) -> FastEncoding:
        """`text`'s tokens (no special tokens): the same ids and offsets as the model's tokenizer."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[FastEncoding]:
        """`encode` of each text, with few calls into either library: a call costs microseconds
        whatever its length, and texts are often short.

        The texts go to blingfire joined by line breaks, in batches of about `_BATCH_CHARS`, with
        their fallback runs blanked to spaces (a separator neither library tokenizes: the other
        tokens keep their ids and offsets); the runs go to tokenizers in one batch, and each text's
        tokens are put back in order. A text where blingfire shows a word over the length limit is
        done again on its own (`_assemble`).
        """
        out: list[FastEncoding] = []
        start = chars = 0
        for i, text in enumerate(texts):
            chars += len(text) + 1
            if chars >= _BATCH_CHARS or i == len(texts) - 1:
                out += self._encode_joined(texts[start : i + 1])
                start, chars = i + 1, 0
        return out

    def _encode_joined(self, texts: Sequence[str]) -> list[FastEncoding]:
        runs = [self.fallback_runs(text) for text in texts]
        flat = [text[s:e] for text, found in zip(texts, runs) for s, e in found]
        encodings = iter(self.reference.encode_batch(flat, add_special_tokens=False) if flat else ())
        blanked = [_blank(text, found) if found else text for text, found in zip(texts, runs)]
        bases = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(np.fromiter((len(t) + 1 for t in texts), dtype=np.int64, count=len(texts)), out=bases[1:])
        joined = self._blingfire("\n".join(blanked), 0)
        cuts = joined.starts.searchsorted(bases)  # text i's tokens are [cuts[i], cuts[i + 1])
        again = self._texts_with_long_words(joined, bases) if self._may_hold_long_word(joined.ids) else set()
        out = []
        for i, (text, found) in enumerate(zip(texts, runs)):
            self.chars += len(text)
            own = [next(encodings) for _ in found]
            if i in again:
                out.append(self._assemble(text, found, 0, True, own))
                continue
            a, b, base = cuts[i], cuts[i + 1], bases[i]
            enc = FastEncoding(joined.ids[a:b], joined.starts[a:b] - base, joined.ends[a:b] - base)
            if found:
                self.fallback_chars += sum(e - s for s, e in found)
                parts = [enc] + [self._reference(text[s:e], s, own_enc) for (s, e), own_enc in zip(found, own)]
                enc = FastEncoding(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("ids", "starts", "ends")))
                order = np.argsort(enc.starts, kind="stable")
                enc = FastEncoding(enc.ids[order], enc.starts[order], enc.ends[order])
            out.append(enc)
        return out

    def _texts_with_long_words(self, enc: FastEncoding, bases: np.ndarray) -> set[int]:
        """Indices of the joined texts holding a word whose span is over the length limit (a word's
        span in characters is at least its normalized length, what the limit counts)."""
        first = np.flatnonzero(self._flags[enc.ids] != 1)  # each word's first token
        last = np.empty_like(first)
        last[:-1] = first[1:] - 1
        last[-1] = len(enc.ids) - 1
        long = enc.starts[first[(enc.ends[last] - enc.starts[first]) > _MAX_WORD_CHARS]]
        return set((bases.searchsorted(long, side="right") - 1).tolist())

    def _assemble(
        self, text: str, runs: list[tuple[int, int]], base: int, check_words: bool, encoded: list | None = None
    ) -> FastEncoding:
        """`runs` through tokenizers (`encoded`: their encodings, where already made), the text between
        them through blingfire, joined in order."""
        if not runs:
            return self._fast(text, base, check_words)
        parts: list[FastEncoding] = []
        done = 0
        for k, (start, end) in enumerate(runs):
            if start > done:
                parts.append(self._fast(text[done:start], base + done, check_words))
            parts.append(self._reference(text[start:end], base + start, encoded[k] if encoded else None))
            self.fallback_chars += end - start
            done = end
        if done < len(text):
            parts.append(self._fast(text[done:], base + done, check_words))
        return FastEncoding(
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.starts for p in parts]),
            np.concatenate([p.ends for p in parts]),
        )

    def _fast(self, text: str, base: int, check_words: bool) -> FastEncoding:
        """blingfire on text of safe characters; where it holds a word over WordPiece's length limit
        (tokenizers gives that word one [UNK]), the runs of separator-free characters longer than the
        limit go to tokenizers instead (a word's span in characters is at least its normalized length)."""
        enc = self._blingfire(text, base)
        if not check_words or not self._may_hold_long_word(enc.ids):
            return enc
        if not self._texts_with_long_words(enc, np.zeros(1, dtype=np.int64)):
            return enc
        spots = [found.start() for found in _LONG_RUN.finditer(text)]
        return self._assemble(text, _runs_at(text, spots), base, False)

    def _may_hold_long_word(self, ids: np.ndarray) -> bool:
        """Cheap test on ids alone: False means no word of the text is over the length limit."""
        flags = self._flags[ids].tobytes()
        return b"\x02" in flags or self._long_word_pieces in flags

    def encode_ids(self, texts: Sequence[str], max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As `wikiembed.tokenizing.encode_ids`: each text's ids with the special tokens, flat, cut
        to `max_length` tokens (special tokens included) on the right as tokenizers' truncation does."""
        keep = None if max_length is None else max(max_length - len(self.prefix) - len(self.suffix), 0)
        bodies = [enc.ids[:keep] for enc in self.encode_batch(texts)]
        lengths = np.fromiter(map(len, bodies), dtype=np.int64, count=len(bodies)) + len(self.prefix) + len(self.suffix)
        offsets = np.zeros(len(bodies) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        pieces = [part for body in bodies for part in (self.prefix, body, self.suffix)]
        ids = np.concatenate(pieces).astype(np.int32, copy=False) if pieces else np.zeros(0, np.int32)
        return ids, offsets

    def _blingfire(self, text: str, base: int) -> FastEncoding:
        data = text.encode("utf-8")
        size = len(data) + 1  # a token holds at least one character of at least one byte
        ids = np.empty(size, dtype=np.int32)
        starts = np.empty(size, dtype=np.int32)
        ends = np.empty(size, dtype=np.int32)
        with self._lock:
            count = self._lib.TextToIdsWithOffsets(
                self._handle, data, len(data), ids.ctypes.data, starts.ctypes.data, ends.ctypes.data, size, self._unk
            )
        if count < 0 or count > size:  # never seen; the reference is always right
            self.fallback_chars += len(text)
            return self._reference(text, base)
        ids, starts, ends = ids[:count], starts[:count], ends[:count]
        ends = ends + 1  # blingfire's ends are inclusive
        # Its offsets are UTF-8 byte positions: a token's character position is its byte position
        # less the extra bytes of the multi-byte characters before it (tokens never split a character).
        if len(data) != len(text):
            raw = np.frombuffer(data, dtype=np.uint8)
            leads = np.flatnonzero(raw >= 0xC0)  # first bytes of multi-byte characters
            extra = np.zeros(len(leads) + 1, dtype=np.int64)
            np.cumsum(1 + (raw[leads] >= 0xE0) + (raw[leads] >= 0xF0), out=extra[1:])
            starts = starts - extra[np.searchsorted(leads, starts)]
            ends = ends - extra[np.searchsorted(leads, ends)]
        return FastEncoding(ids, starts + base if base else starts, ends + base if base else ends)

    def _reference(self, text: str, base: int, enc: Any = None) -> FastEncoding:
        if enc is None:
            enc = self.reference.encode(text, add_special_tokens=False)
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        return FastEncoding(np.asarray(enc.ids, dtype=np.int32), offsets[:, 0] + base, offsets[:, 1] + base)


def _blank(text: str, runs: list[tuple[int, int]]) -> str:
    """`text` with the characters of `runs` replaced by spaces."""
    pieces, done = [], 0
    for start, end in runs:
        pieces += [text[done:start], " " * (end - start)]
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


def _runs_at(text: str, spots: list[int]) -> list[tuple[int, int]]:
    """The separator-delimited runs of `text` holding the positions `spots` (sorted), merged, in order."""
    runs: list[tuple[int, int]] = []
    for spot in spots:
        if runs and spot < runs[-1][1]:
            continue  # inside the run already taken
        start = max(text.rfind(sep, 0, spot) for sep in _SEPARATORS) + 1
        found = _SEPARATOR.search(text, spot)
        end = found.start() if found else len(text)
        if runs and start <= runs[-1][1]:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs


def _blingfire_lib() -> tuple[Any, str] | None:
    """blingfire's C library and its model folder, or None where it is absent or does not load."""
    try:
        import blingfire
    except (ImportError, OSError):  # not installed, or no build of its library for this platform
        return None
    lib = blingfire.blingfire
    lib.LoadModel.restype = ctypes.c_void_p
    lib.TextToIdsWithOffsets.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_int, ctypes.c_int,
    ]
    return lib, os.path.dirname(blingfire.__file__)


def vocab_sha256(tokenizer: Any) -> str:
    """sha256 of the tokenizer's model vocabulary: its tokens in id order, one per line."""
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    return hashlib.sha256("\n".join(sorted(vocab, key=vocab.__getitem__)).encode()).hexdigest()


def _reproducible(config: dict) -> bool:
    """Whether a tokenizer.json describes the tokenizer blingfire's BERT-uncased model reproduces."""
    normalizer = dict(config.get("normalizer") or {})
    strip = normalizer.pop("strip_accents", None)
    model = config.get("model") or {}
    return (
        normalizer == _NORMALIZER
        and strip in (None, True)  # None: follows lowercase, so accents are stripped
        and config.get("pre_tokenizer") == {"type": "BertPreTokenizer"}
        and model.get("type") == "WordPiece"
        and model.get("unk_token") == "[UNK]"
        and model.get("continuing_subword_prefix") == "##"
        and model.get("max_input_chars_per_word") == _MAX_WORD_CHARS
        # An added token is matched in the raw text before normalizing: its runs go to tokenizers,
        # which needs it to hold no separator (a run never splits it) and to be matched as written.
        and all(
            not t.get("normalized") and not any(sep in t["content"] for sep in _SEPARATORS)
            for t in config.get("added_tokens") or []
        )
    )


# Texts of the self-check: every 40th safe character, alone, between letters, and in words of six.
def _self_check_texts() -> list[str]:
    chars = [chr(c) for a, b in SAFE_RANGES for c in range(a, b + 1)][::40]
    return [
        " ".join(chars),
        " ".join(f"a{c}b" for c in chars),
        " ".join("".join(chars[i : i + 6]) for i in range(0, len(chars), 6)),
        "The quick brown fox, naïve café; 東京 🙂 x-ray (1,024.5)",
    ]


_FAST: dict[int, tuple[Any, FastWordPiece | None]] = {}


def fast_wordpiece(tokenizer: Any, which: TokenizerChoice | None = None) -> FastWordPiece | None:
    """The fast path for `tokenizer`, or None where it does not apply (then use `tokenizer` itself).

    `which`: "tokenizers" never takes the fast path; None: this process's `choice()`. Made once per
    tokenizer object and process.
    """
    if (which or choice()) == "tokenizers":
        return None
    found = _FAST.get(id(tokenizer))
    if found is not None and found[0] is tokenizer:
        return found[1]
    if len(_FAST) >= 8:
        _FAST.clear()
    fast = _make(tokenizer)
    _FAST[id(tokenizer)] = (tokenizer, fast)
    return fast


def _make(tokenizer: Any) -> FastWordPiece | None:
    config = json.loads(tokenizer.to_str())
    if not _reproducible(config) or vocab_sha256(tokenizer) != BERT_UNCASED_VOCAB_SHA256:
        return None
    loaded = _blingfire_lib()
    if loaded is None:
        return None
    lib, folder = loaded
    handle = lib.LoadModel(os.path.join(folder, _BLINGFIRE_MODEL).encode())
    if not handle:
        return None
    added = [t["content"] for t in config.get("added_tokens") or []]
    fast = FastWordPiece(tokenizer, lib, handle, added, tokenizer.token_to_id("[UNK]"))
    for text in _self_check_texts():
        got = fast.encode(text)
        want = fast.reference.encode(text, add_special_tokens=False)
        if got.ids.tolist() != want.ids or list(zip(got.starts.tolist(), got.ends.tolist())) != want.offsets:
            warnings.warn(
                "blingfire and tokenizers disagree on the self-check text with the installed versions; "
                "tokenizing with tokenizers only (same ids, slower).",
                stacklevel=3,
            )
            return None
    fast.chars = fast.fallback_chars = 0
    return fast


def name(tokenizer: Any, which: TokenizerChoice | None = None) -> str:
    """Which tokenizer counts `tokenizer`'s tokens (`which` as `fast_wordpiece`): "blingfire" or "tokenizers"."""
    return "blingfire" if fast_wordpiece(tokenizer, which) is not None else "tokenizers"
