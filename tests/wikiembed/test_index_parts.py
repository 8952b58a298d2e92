"""Segments' graphs searched for the live rows of a generation that dropped some of their rows."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("usearch")

from wikiembed import index as ann  # noqa: E402


def _graph(vectors: np.ndarray, folder=None):  # noqa: ANN001, ANN202
    from usearch.index import Index

    graph = Index(ndim=vectors.shape[1], metric="ip", dtype="f32")
    graph.add(np.arange(len(vectors), dtype=np.uint64), vectors)
    if folder is None:
        return graph
    graph.save(str(folder / "graph.usearch"))
    return Index.restore(str(folder / "graph.usearch"), view=True)  # as search opens it: memory-mapped


def _part(vectors: np.ndarray, dropped: np.ndarray, fi: int = 3, folder=None) -> ann.SegmentIndex:  # noqa: ANN001
    """A segment of one data file (generation file index `fi`): keys are its row numbers."""
    return ann.SegmentIndex([fi], _graph(vectors, folder), {"rows": len(vectors), "scalar": "f32"}, (lambda: dropped) if len(dropped) else None)


def _vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_dropped_rows_never_come_back_and_the_live_ones_fill_their_place(monkeypatch, tmp_path):
    vectors = _vectors(200)
    queries = _vectors(4, seed=1)
    nearest = np.argsort(-(queries @ vectors.T), axis=1)
    dropped = np.unique(nearest[:, :30])  # each query's 30 nearest rows are no longer the generation's
    part = _part(vectors, dropped, folder=tmp_path)
    asked = []
    search = ann.SegmentIndex.search

    def spy(self, query, depth, *, exact=False):  # noqa: ANN001, ANN202
        asked.append((len(query), depth, exact))
        return search(self, query, depth, exact=exact)

    monkeypatch.setattr(ann.SegmentIndex, "search", spy)
    monkeypatch.setattr(ann, "DROPPED_EXTRA", 0)  # the first answer is all dropped rows: the file is searched exactly
    found, distances = part.candidates(queries, 5)
    assert asked == [(4, 10, False), (4, 5 + len(dropped), True)]
    assert (found >> 32 == 3).all()
    for q, row in enumerate(found & 0xFFFFFFFF):
        live = [r for r in nearest[q] if r not in set(dropped.tolist())]
        assert row.tolist() == live[:5]
        assert np.allclose(distances[q], 1 - queries[q] @ vectors[row].T, atol=1e-5)  # inner product distance


def test_a_file_without_dropped_rows_is_asked_once_and_pads_with_minus_one():
    part = _part(_vectors(3), np.zeros(0, dtype=np.int64), fi=0)
    found, distances = part.candidates(_vectors(2, seed=1), 5)
    assert found.shape == (2, 5) and (found[:, :3] >= 0).all() and (found[:, 3:] == -1).all()
    assert np.isfinite(distances[:, :3]).all() and np.isinf(distances[:, 3:]).all()
    single, _ = part.candidates(_vectors(1, seed=2), 2)
    assert single.shape == (1, 2) and (single >= 0).all()


def test_a_file_whose_rows_are_all_dropped_proposes_nothing():
    part = _part(_vectors(4), np.arange(4))
    assert (part.candidates(_vectors(2, seed=1), 3)[0] == -1).all()


def test_the_files_candidates_are_the_best_of_them_all_and_values_come_from_their_own_file():
    from wikiembed.compact import Form, Scorer

    vectors = _vectors(300, dim=32)
    split = [vectors[:120], vectors[120:200], vectors[200:]]
    index = ann.VectorIndex([_part(v, np.zeros(0, dtype=np.int64), fi=fi) for fi, v in enumerate(split)], Form("float32", 32, 32))
    queries = _vectors(6, dim=32, seed=1)
    found = index.candidates(Scorer(queries, Form("float32", 32, 32)), 10)
    assert found.shape == (6, 10)
    starts = [0, 120, 200]
    rows = np.array([[starts[p >> 32] + (p & 0xFFFFFFFF) for p in q] for q in found])
    best = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, best)]) >= 0.95
    flat = found.reshape(-1)
    assert np.array_equal(index.values(flat), vectors[rows.reshape(-1)])
