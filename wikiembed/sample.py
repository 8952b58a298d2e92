"""The built-in sample source: deterministic, Wikipedia-shaped articles with no network.

`sample:N` is the embedded default of `wikiembed run`. Article `i` depends only
on `(seed, i)`, so `sample:1000` is a prefix of `sample:2000` and every run of
the same spec yields byte-identical text.

Shaped like Wikipedia where speed depends on it:
- Lengths: most articles short, a rare heavy tail past 100k characters
  (log-normal around a mean of about 1,100 characters, median ~670, as Simple
  English Wikipedia; one article in 2,000 is 100k-250k characters).
- Token density: about 121 tokens (BERT uncased, special tokens included) per
  full 512-character window, as real English Wikipedia text has (measured on
  40,000 windows of it). Plain common words alone give ~95, which would flatter
  every tokenizer-bound speed by ~1.3x: the text also has names the tokenizer
  splits into word pieces, numbers with separators, commas, parentheses and
  hyphenated words, at rates tuned to that density (`tests/wikiembed/test_sources.py`
  checks it).
- Paragraphs of sentences, with some non-ASCII words (accents, CJK, RTL, emoji).
"""

from __future__ import annotations

import math
import random
from typing import Iterator

# Bumping this changes every sample fingerprint (and so every sample store's plan).
GENERATOR_VERSION = 2
# The largest `sample:N`: more articles than English Wikipedia has (about 6.9 million), so any size
# worth simulating fits (about 12 GB of text, over an hour to generate at about 2,000 articles a
# second on one core), while a typo of extra digits is refused instead of writing for years.
MAX_ARTICLES = 10_000_000

# log-normal: mean = exp(mu + sigma^2 / 2) ~ 1,100 characters, median ~ 670.
_MU, _SIGMA = math.log(1100) - 0.5, 1.0
_LONG_TAIL_RATE = 1 / 2000  # about one article in 2,000 is 100k-250k characters
_MAX_BODY = 60_000  # the log-normal's own tail is cut here; the long tail goes past it

_WORDS = (
    "the of and in to a was is for on as by with from at that his an were which "
    "are this be also first has had its one their after new two who city not "
    "century river state national school known population between during game "
    "season team war united world music album band film series church village "
    "county district region university history government north south east west "
    "built born died released released member species family island language "
    "museum railway station party election award league club player football "
    "system water mountain lake company art book novel written published "
    "science energy light time space earth planet star computer software data "
    "theory number people king queen empire battle army bridge road town area"
).split()
_UNICODE_WORDS = [
    "café", "naïve", "Zürich", "São Paulo", "Kraków", "Ångström", "résumé", "façade",
    "東京", "北京", "Москва", "Αθήνα", "القاهرة", "ירושלים", "मुंबई", "서울",
    "e\u0301tude", "Z\u0308u\u0308rich", "🙂", "🌍", "👩\u200d🔬", "\u200fשלום\u200f",
]


# Name syllables: joined into proper nouns that BERT's vocabulary lacks, so they
# split into several word pieces as Wikipedia's names and rare terms do.
_SYLLABLES = (
    "ka vor an dell ith mar ro sen thal bu quin ez lo gar wyn ost ri fel dur ach "
    "mon tre vask ul pen zor ham ig lys cor bre nak sho val tum erd fy"
).split()
_TERMS = (
    "municipality archipelago constituency metropolitan prefecture gastropod sovereignty "
    "hydroelectric semiconductor ecclesiastical thermodynamics cartographer biodiversity "
    "referendum infrastructure photosynthesis baroque renaissance neoclassical"
).split()

# Per-word rates, tuned so a full 512-character window holds ~121 tokens.
_NAME_RATE = 0.10
_TERM_RATE = 0.03
_COMMA_RATE = 0.10
_NUMBER_RATE = 0.06
_PAREN_RATE = 0.12  # per sentence
_HYPHEN_RATE = 0.03


def _name(rng: random.Random) -> str:
    return "".join(rng.choices(_SYLLABLES, k=rng.randint(2, 3))).capitalize()


def _number(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return str(rng.randint(1000, 2024))  # a year
    if kind < 0.7:
        return f"{rng.randint(1, 999)},{rng.randint(0, 999):03d}"  # 12,400
    if kind < 0.9:
        return f"{rng.randint(0, 99)}.{rng.randint(0, 9)}"  # 3.5
    return f"{rng.randint(1, 99)}%"


def _sentence(rng: random.Random) -> str:
    n = rng.randint(6, 24)
    words = []
    for _ in range(n):
        draw = rng.random()
        if draw < _NAME_RATE:
            word = _name(rng)
        elif draw < _NAME_RATE + _TERM_RATE:
            word = rng.choice(_TERMS)
        elif draw < _NAME_RATE + _TERM_RATE + _NUMBER_RATE:
            word = _number(rng)
        elif draw < _NAME_RATE + _TERM_RATE + _NUMBER_RATE + _HYPHEN_RATE:
            word = "-".join(rng.choices(_WORDS, k=2))
        else:
            word = rng.choice(_WORDS)
        if rng.random() < _COMMA_RATE:
            word += ","
        words.append(word)
    if rng.random() < 0.15:
        words[rng.randrange(n)] = rng.choice(_UNICODE_WORDS)
    if rng.random() < _PAREN_RATE:
        inner = f"born {rng.randint(1800, 2000)}" if rng.random() < 0.5 else f"also {_name(rng)}"
        words.insert(rng.randrange(1, n + 1), f"({inner})")
    words[0] = words[0].capitalize()
    return " ".join(words).rstrip(",") + rng.choice(".....?!")


def _body(rng: random.Random, target: int) -> str:
    paragraphs: list[str] = []
    size = 0
    while size < target:
        para = " ".join(_sentence(rng) for _ in range(rng.randint(2, 6)))
        paragraphs.append(para)
        size += len(para) + 2
    return "\n\n".join(paragraphs)[: max(target, 1)].rstrip() + "."


def sample_article(i: int, seed: int = 0) -> dict[str, str]:
    """The `i`-th sample article (0-based): `{"id", "url", "title", "text"}`, all strings."""
    rng = random.Random(f"wikiembed-sample-{GENERATOR_VERSION}-{seed}-{i}")
    if rng.random() < _LONG_TAIL_RATE:
        target = rng.randint(100_000, 250_000)
    else:
        target = min(int(rng.lognormvariate(_MU, _SIGMA)), _MAX_BODY)
    target = max(target, 40)
    title_words = [w.capitalize() for w in rng.choices(_WORDS, k=rng.randint(1, 3))]
    title = " ".join(title_words) + f" {i + 1}"
    page_id = str(10 * i + 1 + seed)
    return {
        "id": page_id,
        "url": "https://simple.wikipedia.org/wiki?curid=" + page_id,
        "title": title,
        "text": _body(rng, target),
    }


def generate_articles(n: int, seed: int = 0, start: int = 0) -> Iterator[dict[str, str]]:
    """Articles `start .. n-1` of the sample, in order."""
    for i in range(start, n):
        yield sample_article(i, seed)
