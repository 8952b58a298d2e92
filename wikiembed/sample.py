"""The built-in sample source: deterministic, Wikipedia-shaped articles with no network.

`sample:N` is the embedded default of `wikiembed run`. Article `i` depends only
on `(seed, i)`, so `sample:1000` is a prefix of `sample:2000` and every run of
the same spec yields byte-identical text. Lengths follow Simple English
Wikipedia's shape: log-normal around a mean of about 1,100 characters, with a
rare heavy tail past 100k; text comes in paragraphs of sentences with some
non-ASCII words (accents, CJK, RTL, emoji) mixed in.
"""

from __future__ import annotations

import math
import random
from typing import Iterator

# Bumping this changes every sample fingerprint (and so every sample store's plan).
GENERATOR_VERSION = 1

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


def _sentence(rng: random.Random) -> str:
    n = rng.randint(6, 24)
    words = rng.choices(_WORDS, k=n)
    if rng.random() < 0.15:
        words[rng.randrange(n)] = rng.choice(_UNICODE_WORDS)
    if rng.random() < 0.2:
        words.insert(rng.randrange(n), str(rng.randint(1000, 2024)))
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice(".....?!")


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
