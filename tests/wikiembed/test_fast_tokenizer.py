"""The fast tokenizing path gives exactly the ids and offsets of `tokenizers`, or is not used.

Also the derivation of `wikiembed/fast_tokenizer_chars.py`: run
`python -m tests.wikiembed.test_fast_tokenizer --write` to regenerate it (after upgrading
`tokenizers` or blingfire), then run these tests.
"""

from __future__ import annotations

import ctypes
import gzip
import json
import random
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from wikiembed import fast_tokenizer
from wikiembed.fast_tokenizer import FastWordPiece, fast_wordpiece, vocab_sha256
from wikiembed.fast_tokenizer_chars import SAFE_RANGES
from wikiembed.model import load_tokenizer
from wikiembed.sample import generate_articles

pytest.importorskip("blingfire")

# Contexts each candidate character is tried in: alone, inside a word, between spaces, at a word's
# edges, repeated, after a word piece, beside punctuation and digits.
CONTEXTS = (
    lambda c: c,
    lambda c: "a" + c + "b",
    lambda c: "x " + c + " y",
    lambda c: "ab" + c,
    lambda c: c + "ab",
    lambda c: c + c + c,
    lambda c: "ing" + c + "ing",
    lambda c: "[" + c + "]",
    lambda c: "1" + c + "1",
)
MAN = Path("/usr/share/man")


def _fast() -> FastWordPiece:
    fast = fast_wordpiece(load_tokenizer())
    assert fast is not None, "the bundled MiniLM's BERT-uncased tokenizer must take the fast path"
    return fast


def _blingfire_only(fast: FastWordPiece, text: str):
    """blingfire on the whole text, with no fallback runs (what the fast path would give unguarded)."""
    return fast._blingfire(text, 0)


def _same(fast: FastWordPiece, texts: list[str]) -> list[str]:
    """The texts whose fast ids or offsets differ from tokenizers' (should be none)."""
    reference = load_tokenizer()
    wrong = []
    for text, want in zip(texts, reference.encode_batch(texts, add_special_tokens=False)):
        got = fast.encode(text)
        if got.ids.tolist() != want.ids or list(zip(got.starts.tolist(), got.ends.tolist())) != want.offsets:
            wrong.append(text)
    return wrong


def agreeing_chars() -> list[int]:
    """Assigned code points on which blingfire and tokenizers agree (ids and offsets) in every context,
    and which BERT's normalizer maps to at most one character (so a run is at least as long as its
    longest word)."""
    tokenizer = load_tokenizer()
    fast = _fast()
    candidates = [
        c for c in range(0x110000)
        if unicodedata.category(chr(c)) not in ("Cn", "Co", "Cs")
        and len(tokenizer.normalizer.normalize_str(chr(c)).strip()) <= 1
    ]
    bad: set[int] = set()
    agrees = _library_agrees(fast)
    for context in CONTEXTS:
        texts = [context(chr(c)) for c in candidates]
        for c, text, want in zip(candidates, texts, tokenizer.encode_batch(texts, add_special_tokens=False)):
            if c not in bad and not agrees(text, want.ids, want.offsets):
                bad.add(c)
    return [c for c in candidates if c not in bad]


def _library_agrees(fast: FastWordPiece):
    """`agrees(text, ids, offsets)`: whether blingfire's library, called as `FastWordPiece._blingfire` calls it,
    gives these ids and character offsets for a short text. It reuses one set of buffers and maps byte offsets to
    characters in plain Python (a fifth of `_blingfire`'s cost a call, over 1.2 million calls here); `_blingfire`'s
    own mapping is checked by test_a_sample_of_safe_characters_agrees, on every UTF-8 length."""
    size = 64  # tokens: more than any context's text holds bytes
    ids, starts, ends = ((ctypes.c_int32 * size)() for _ in range(3))
    at = [ctypes.addressof(buffer) for buffer in (ids, starts, ends)]
    lib, handle, unk = fast._lib, fast._handle, fast._unk

    def agrees(text: str, want_ids: list[int], want_offsets: list[tuple[int, int]]) -> bool:
        data = text.encode("utf-8")
        assert len(data) < size, text
        count = lib.TextToIdsWithOffsets(handle, data, len(data), *at, size, unk)
        if not 0 <= count < size or ids[:count] != want_ids:
            return False
        # The character of each byte, and one past the end: blingfire's ends are inclusive byte positions.
        char_of = [i for i, ch in enumerate(text) for _ in range(len(ch.encode("utf-8")))] + [len(text)]
        return [(char_of[a], char_of[b + 1]) for a, b in zip(starts[:count], ends[:count])] == want_offsets

    return agrees


def _ranges(codes: list[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for c in codes:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return [(a, b) for a, b in out]


def _safe_codes() -> list[int]:
    return [c for a, b in SAFE_RANGES for c in range(a, b + 1)]


@pytest.mark.slow
def test_every_safe_character_agrees_in_every_context():
    """The proof of the table: each listed character, in every context, gives the same ids and
    offsets from blingfire alone as from tokenizers (130k characters x 9 contexts: about 20 s)."""
    proven = set(agreeing_chars())
    unproven = [hex(c) for c in _safe_codes() if c not in proven]
    assert not unproven, f"regenerate the table: {unproven[:20]}"


def test_a_sample_of_safe_characters_agrees():
    """The same proof on every 17th listed character (the quick tier)."""
    fast = _fast()
    texts = [context(chr(c)) for c in _safe_codes()[::17] for context in CONTEXTS]
    reference = load_tokenizer()
    wrong = []
    for text, want in zip(texts, reference.encode_batch(texts, add_special_tokens=False)):
        got = _blingfire_only(fast, text)
        if got.ids.tolist() != want.ids or list(zip(got.starts.tolist(), got.ends.tolist())) != want.offsets:
            wrong.append(text)
    assert not wrong, wrong[:10]


def test_blingfire_vocabulary_is_the_models():
    """blingfire's bundled BERT-uncased vocabulary (its id-to-word file) holds the bundled model's
    tokens at the same ids, and the hash the fast path checks is that vocabulary's."""
    import blingfire

    tokenizer = load_tokenizer()
    assert vocab_sha256(tokenizer) == fast_tokenizer.BERT_UNCASED_VOCAB_SHA256
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    handle = blingfire.load_model(str(Path(blingfire.__file__).parent / "bert_base_tok.i2w"))
    try:
        anchor = vocab["a"]
        for i, token in enumerate(sorted(vocab, key=vocab.__getitem__)):
            # Decoding after "a" tells a continuation piece ("a" + "ing") from a word ("a ing").
            got = blingfire.ids_to_text(handle, np.array([anchor, i], dtype=np.uint32), False)
            want = "a" + token[2:] if token.startswith("##") else "a " + token
            if token in ("[UNK]", "[CLS]", "[SEP]", "[MASK]"):  # the file spells these in lower case
                want = want.lower()
            assert got == want, (i, token, got)
    finally:
        blingfire.free_model(handle)


ADVERSARIAL = [
    "tab\tcontrol\x00nul\x01soh\x1bESC\x7fDEL\x1c\x1d\x1e\x1fsep\x0bvt\x0cff\x85nel end",
    "cafe\u0301 e\u0301tude Z\u0308u\u0308rich \u0301lead a\u0323\u0301 \u0300\u0300\u0300 Å Ǻ ﬁne İstanbul ΐ ẞ ß",
    "東京と北京 中文字符测试 ｶﾀｶﾅ ひらがな 한국어 서울 가 각 𠀀𪜀 〇 ㈱ 々",
    "emoji 🙂🌍 👩\u200d🔬 🏳️\u200d🌈 👍🏽 #️⃣ 🇫🇷 \U0001F9D1\u200d\U0001F4BB",
    "lone surrogate replaced: \ufffd and \ufffdx\ufffd, BOM \ufeffword",
    "no\u00a0break\u00a0space, narrow\u202fnbsp, ideographic\u3000space, em\u2003space, line\u2028sep, para\u2029sep",
    "zero\u200bwidth\u200cnon\u200djoiner \u200eltr\u200f rtl \u2060wj \u00adsoft\u00adhyphen",
    "a" * 99 + " " + "b" * 100 + " " + "c" * 101 + " " + "d" * 5000 + " x" + "é" * 101 + " " + "東" * 150,
    "literal specials [CLS] [SEP] x[MASK]y [PAD][UNK] [cls] [ CLS ]",
    "mixed: naïve, 東京🙂\u200b[SEP]" + "z" * 120 + "\u0301 end\r\nCRLF\n\n\tpara",
    "\u0600\u0601 arabic \u064b\u064c القاهرة שָׁלוֹם ירושלים मुंबई ภาษาไทย ᠮᠣᠩᠭᠣᠯ",
    "",
    "   ",
    "\u0301",
    "x\u0301" * 60,
]


def test_adversarial_unicode_gives_the_same_ids_and_offsets():
    fast = _fast()
    assert _same(fast, ADVERSARIAL) == []
    # and the guard is what makes them agree: unguarded, blingfire differs on most of these
    reference = load_tokenizer()
    unguarded = sum(
        _blingfire_only(fast, t).ids.tolist() != reference.encode(t, add_special_tokens=False).ids for t in ADVERSARIAL
    )
    assert unguarded >= 8


def test_random_mixtures_of_safe_and_unsafe_characters_agree():
    """Fuzz: words drawn from listed characters, unlisted ones, long runs and added tokens."""
    rng = random.Random(26)
    safe = _safe_codes()
    unsafe = [0x0, 0x7F, 0xAD, 0x200B, 0x200D, 0x301, 0x308, 0xFEFF, 0xFFFD, 0xAC00, 0x1100, 0x2028, 0xE000]
    common = [ord(c) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()-–—é東🙂"]
    texts = []
    for _ in range(400):
        words = []
        for _ in range(rng.randint(1, 40)):
            pool = rng.choice([safe, common, common, unsafe + common])
            word = "".join(chr(rng.choice(pool)) for _ in range(rng.choice([1, 3, 8, 20, 99, 100, 101, 150])))
            if rng.random() < 0.03:
                word += rng.choice(["[CLS]", "[SEP]", "[MASK]"])
            words.append(word)
            words.append(rng.choice([" ", " ", "\n", "\t", "\r\n", "  ", "\u00a0", "\u3000"]))
        texts.append("".join(words))
    fast = _fast()
    assert _same(fast, texts) == []
    assert 0 < fast.fallback_chars < fast.chars


def test_sample_articles_agree_and_mostly_take_the_fast_path():
    texts = [a["text"] for a in generate_articles(400)]
    fast = _fast()
    fast.chars = fast.fallback_chars = 0
    assert _same(fast, texts) == []
    assert fast.fallback_chars / fast.chars < 0.02  # only the runs around the sample's rare characters


def test_threads_sharing_the_fast_path_get_the_same_tokens():
    """Two shards of a run can be chunked by two threads of one process, with one cached fast path."""
    from concurrent.futures import ThreadPoolExecutor

    fast = _fast()
    texts = [a["text"] for a in generate_articles(200)] + ADVERSARIAL
    alone = [e.ids.tolist() for e in fast.encode_batch(texts)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda _: [e.ids.tolist() for e in fast.encode_batch(texts)], range(8)))
    assert all(got == alone for got in together)


def _man_pages(count: int) -> list[str]:
    """Raw troff sources of installed man pages (every language present), decoded as UTF-8."""
    files = sorted(p for p in MAN.rglob("*.gz") if p.is_file())
    texts = []
    for path in files[:: max(1, len(files) // count)][:count]:
        try:
            texts.append(gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace"))
        except (OSError, EOFError):
            continue
    return texts


@pytest.mark.skipif(not MAN.is_dir(), reason="no man pages installed")
def test_man_pages_agree():
    texts = _man_pages(300)
    assert len(texts) > 100
    fast = _fast()
    assert _same(fast, texts) == []


def test_other_tokenizers_do_not_take_the_fast_path(tmp_path):
    """A tokenizer the fast path does not reproduce gets None (so `tokenizers` is used): a cased
    normalizer, another vocabulary, a longer word limit, a normalized added token, a non-BERT model."""
    from tokenizers import Tokenizer

    config = json.loads(load_tokenizer().to_str())

    def variant(change) -> Tokenizer:
        c = json.loads(json.dumps(config))
        change(c)
        return Tokenizer.from_str(json.dumps(c))

    def swap_two_tokens(c):
        vocab = c["model"]["vocab"]
        vocab["the"], vocab["of"] = vocab["of"], vocab["the"]

    variants = [
        lambda c: c["normalizer"].update(lowercase=False),
        lambda c: c["normalizer"].update(strip_accents=False),
        lambda c: c.update(pre_tokenizer={"type": "Whitespace"}),
        lambda c: c["model"].update(max_input_chars_per_word=200),
        swap_two_tokens,
        lambda c: c["added_tokens"].append(
            {"id": 30522, "content": "<doc>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": True, "special": False}
        ),
    ]
    for change in variants:
        assert fast_wordpiece(variant(change)) is None
    assert fast_wordpiece(Tokenizer.from_str(json.dumps(config))) is not None  # the unchanged copy does


def test_choice_tokenizers_turns_the_fast_path_off(monkeypatch):
    monkeypatch.setenv(fast_tokenizer.CHOICE_ENV, "tokenizers")
    assert fast_wordpiece(load_tokenizer()) is None
    assert fast_tokenizer.name(load_tokenizer()) == "tokenizers"
    monkeypatch.setenv(fast_tokenizer.CHOICE_ENV, "blingfire-please")
    from wikiembed.errors import InputError

    with pytest.raises(InputError, match="WIKIEMBED_TOKENIZER"):
        fast_wordpiece(load_tokenizer())


def test_without_blingfire_the_reference_is_used(monkeypatch):
    monkeypatch.setattr(fast_tokenizer, "_blingfire_lib", lambda: None)
    monkeypatch.setattr(fast_tokenizer, "_FAST", {})
    assert fast_wordpiece(load_tokenizer()) is None


def _mixed_articles(tmp_path: Path) -> Path:
    """A jsonl source of sample articles, man pages and the adversarial texts (as whole articles)."""
    rows = [dict(a) for a in generate_articles(300)]
    rows += [{"id": f"man{i}", "url": "", "title": "man", "text": t} for i, t in enumerate(_man_pages(40) if MAN.is_dir() else [])]
    rows += [{"id": f"adv{i}", "url": "", "title": "adversarial", "text": t * 30} for i, t in enumerate(ADVERSARIAL) if t.strip()]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("size,overlap", [(256, 0), (64, 0), (128, 16)])
def test_fast_chunks_are_the_reference_chunks(tmp_path, monkeypatch, size, overlap):
    """The token chunker on the fast path gives the same chunks (boundaries, offsets, ids) as with
    tokenizers alone, and each chunk's ids are what the tokenizer gives its text."""
    import pyarrow as pa

    from wikiembed.chunking import Chunking, TokenChunker, chunk_table

    tokenizer = load_tokenizer()
    rows = pa.Table.from_pylist([json.loads(line) for line in _mixed_articles(tmp_path).read_text().splitlines()])
    chunking = Chunking("tokens", size, overlap)
    assert TokenChunker(tokenizer, size, overlap, "auto").fast is not None
    assert TokenChunker(tokenizer, size, overlap, "tokenizers").fast is None
    monkeypatch.setenv(fast_tokenizer.CHOICE_ENV, "tokenizers")
    reference = chunk_table(rows, chunking, tokenizer, workers=1)
    monkeypatch.delenv(fast_tokenizer.CHOICE_ENV)
    fast = chunk_table(rows, chunking, tokenizer, workers=1)
    assert fast.equals(reference)
    texts = fast.column("text").to_pylist()
    assert fast.column("input_ids").to_pylist() == [e.ids for e in tokenizer.encode_batch(texts)]


def test_a_store_cut_with_either_tokenizer_is_byte_identical(tmp_path, monkeypatch):
    """chunk_shard on the worker processes, once per choice: the same chunk file, byte for byte."""
    from wikiembed import chunk_files, chunking
    from wikiembed.plan import prepare
    from wikiembed.settings import RunSettings

    source = _mixed_articles(tmp_path)
    monkeypatch.setattr(chunk_files, "PARALLEL_MIN_CHARS", 0)
    monkeypatch.setattr(chunk_files, "PART_CHARS", 50_000)  # several parts, on the worker processes
    files = {}
    for which in ("tokenizers", "auto"):
        monkeypatch.setenv(fast_tokenizer.CHOICE_ENV, which)
        prepared = prepare(RunSettings(source=str(source), store=str(tmp_path / which), shard_rows=100_000))
        chunking.chunk_shard(prepared.store, 0, prepared.manifest)
        files[which] = prepared.store.chunks_path(0).read_bytes()
        assert fast_tokenizer.name(load_tokenizer()) == ("blingfire" if which == "auto" else "tokenizers")
    assert files["auto"] == files["tokenizers"]


@pytest.mark.parametrize("max_length", [None, 128, 8])
def test_encode_ids_on_the_fast_path_is_the_tokenizers_output(max_length):
    """What the engine's `embed` of raw text and `estimate` count: ids with special tokens, truncated
    as the tokenizer is set to, identical on either path, in this process and on worker processes."""
    from tokenizers import Tokenizer

    from wikiembed.tokenizing import encode_ids, encode_ids_part, run_parts, spec

    tokenizer = Tokenizer.from_str(load_tokenizer().to_str())
    if max_length:
        tokenizer.enable_truncation(max_length=max_length)
    texts = [a["text"] for a in generate_articles(200)] + ADVERSARIAL
    want = [e.ids for e in tokenizer.encode_batch(texts)]
    assert fast_wordpiece(tokenizer) is not None
    for which in ("auto", "tokenizers"):
        ids, offsets = encode_ids(tokenizer, texts, which)
        assert ids.dtype.name == "int32" and [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == want
    parts = [(spec(tokenizer), "auto", texts[i : i + 50]) for i in range(0, len(texts), 50)]
    flat = [ids[a:b].tolist() for ids, offsets in run_parts(encode_ids_part, parts, workers=2) for a, b in zip(offsets[:-1], offsets[1:])]
    assert flat == want


def write_table(path: Path) -> None:
    ranges = _ranges(agreeing_chars())
    rows = [", ".join(f"(0x{a:04X}, 0x{b:04X})" for a, b in ranges[i : i + 6]) for i in range(0, len(ranges), 6)]
    body = "\n".join(f"    {row}," for row in rows)
    path.write_text(
        '"""Characters on which blingfire\'s BERT-uncased model and `tokenizers` give the same ids and offsets.\n\n'
        "Inclusive code point ranges, derived and proven by `tests/wikiembed/test_fast_tokenizer.py`\n"
        "(regenerate: `python -m tests.wikiembed.test_fast_tokenizer --write`); do not edit by hand.\n"
        '"""\n\n'
        f"SAFE_RANGES: tuple[tuple[int, int], ...] = (\n{body}\n)\n",
        encoding="utf-8",
    )
    print(f"{len(ranges)} ranges ({sum(b - a + 1 for a, b in ranges)} characters) -> {path}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.wikiembed.test_fast_tokenizer --write")
    write_table(Path(__file__).resolve().parents[2] / "wikiembed" / "fast_tokenizer_chars.py")
