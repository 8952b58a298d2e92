"""Integer sorting and searching of 16-byte digests: the same answers as numpy's byte-string ones."""

from __future__ import annotations

import numpy as np

from wikiembed import digests


def _keys(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.frombuffer(rng.bytes(16 * n), dtype="S16").copy()


def test_sort_order_is_the_stable_byte_string_order_with_shared_heads_and_repeats():
    rng = np.random.default_rng(5)
    keys = _keys(rng, 5000)
    raw = keys.view(np.uint8).reshape(-1, 16)
    raw[100:140, :8] = raw[7, :8]  # forty digests sharing their first 8 bytes
    keys[200:210] = keys[3]  # repeats keep their order (stable)
    assert np.array_equal(digests.sort_order(keys), np.argsort(keys, kind="stable"))
    plain = _keys(rng, 3000)  # no shared head: the integer sort alone
    assert np.array_equal(digests.sort_order(plain), np.argsort(plain, kind="stable"))
    assert digests.sort_order(np.zeros(0, dtype="S16")).tolist() == []


def test_search_finds_every_digest_and_only_those_even_where_heads_are_shared():
    rng = np.random.default_rng(9)
    keys = _keys(rng, 4000)
    raw = keys.view(np.uint8).reshape(-1, 16)
    raw[10:30, :8] = raw[0, :8]
    keys = np.sort(keys)
    heads = digests.head(keys)
    absent = _keys(rng, 500)
    near = keys[:50].copy()  # a shared head, another tail: not there
    near.view(np.uint8).reshape(-1, 16)[:, 15] ^= 0xFF
    query = np.concatenate([keys[rng.permutation(len(keys))], absent, near])
    pos, found = digests.search(keys, heads, query)
    members = set(keys.tolist())
    assert found.tolist() == [q in members for q in query.tolist()]
    assert (keys[pos[found]] == query[found]).all()
    assert found[: len(keys)].all() and not found[len(keys) :].any()
    empty = digests.search(keys[:0], heads[:0], query[:3])
    assert empty[1].tolist() == [False] * 3
