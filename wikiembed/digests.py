"""Sorting and searching arrays of 16-byte digests (numpy `S16`) by integers.

The articles table's id and content digests and the chunks' content keys are 16-byte blake2b digests,
held as `S16` arrays. numpy compares those as byte strings, one call per comparison; their first 8
bytes read as a big-endian unsigned integer (`head`) order them the same way, and integer sorts and
binary searches run several times faster. Digests that share their first 8 bytes (about one pair
among 10^9 random ones) are told apart by the whole digest, so every answer is exact.

Touches: nothing (pure functions over numpy arrays).
"""

from __future__ import annotations

import numpy as np


def head(keys: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each `S16` digest as an unsigned integer, big-endian: their order is the digests' order."""
    return np.ascontiguousarray(keys, dtype="S16").view(">u8")[0::2].astype(np.uint64)


def sort_order(keys: np.ndarray) -> np.ndarray:
    """`np.argsort(keys, kind="stable")` of an `S16` array, by a radix sort of the heads (and, only where
    two heads are equal, of the whole digests)."""
    heads = head(keys)
    order = np.argsort(heads, kind="stable")
    heads = heads[order]
    if len(heads) > 1 and bool((heads[1:] == heads[:-1]).any()):
        del heads
        halves = np.ascontiguousarray(keys, dtype="S16").view(">u8")
        order = np.lexsort((halves[1::2], halves[0::2]))
    return order


def search(keys: np.ndarray, heads: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, found) of each digest of `query` in the sorted `S16` array `keys`, whose `head`s are
    `heads`: the binary search runs over the integers, the queries taken in sorted order (numpy's search
    then starts each one where the last ended)."""
    n = len(keys)
    if not n or not len(query):
        return np.zeros(len(query), dtype=np.int64), np.zeros(len(query), dtype=bool)
    wanted = head(query)
    pos = search_sorted(heads, wanted)
    np.minimum(pos, n - 1, out=pos)
    found = keys[pos] == query
    shared = ~found & (heads[pos] == wanted)
    if shared.any():  # the first digest with this head is another one: search the whole digests
        again = np.minimum(np.searchsorted(keys, query[shared]), n - 1)
        pos[shared], found[shared] = again, keys[again] == query[shared]
    return pos, found


def search_sorted(array: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`np.searchsorted(array, values)`, the values taken in sorted order: numpy's binary search then starts
    each one where the last ended (about twice as fast for random values)."""
    by_value = np.argsort(values)
    pos = np.empty(len(values), dtype=np.int64)
    pos[by_value] = np.searchsorted(array, values[by_value])
    return pos
