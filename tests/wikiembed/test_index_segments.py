"""A generation's index as a few segments: many small data files share a segment, a new version indexes
only its new files and reuses the segments it keeps, small segments are merged, a killed build resumes
from its finished segments, and search through the segments finds what the exact scan finds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("usearch")

from wikiembed import index as ann  # noqa: E402
from wikiembed import index_segments as segs  # noqa: E402
from wikiembed.compact import Form, Scorer  # noqa: E402
from wikiembed.store_parts import Part  # noqa: E402

DIM = 32
FORM = Form("float32", DIM, DIM)


class Files:
    """Data files of a store (not written: their vectors are kept here), as a generation's `Part`s."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.vectors: dict[Path, np.ndarray] = {}
        self.read: list[Path] = []  # files whose rows a build asked for, in order

    def add(self, gen: str, shard: int, rows: int, seed: int) -> Part:
        path = self.store / "gens" / gen / "data" / f"{shard:05d}.parquet"
        v = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
        self.vectors[path] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return Part(gen, shard, path, f"sha-{gen}-{shard}-{seed}", 0, rows, rows)

    def batches(self, part: Part):  # noqa: ANN201
        self.read.append(part.path)
        v = self.vectors[part.path]
        return (v[i : i + 7] for i in range(0, len(v), 7))

    def build(self, parts: list[Part], gen: str):  # noqa: ANN201
        self.read = []
        return segs.build_segments(parts, FORM, self.store, self.store / "gens" / gen, self.batches)


def _rows(built) -> int:  # noqa: ANN001
    return sum(s.rows for s, _, new in built[1] if new)


def _segments(store: Path, gen: str) -> list[str]:
    return sorted(p.name for p in (store / "gens" / gen / "index" / "embedding").iterdir())


@pytest.fixture()
def files(tmp_path, monkeypatch):
    monkeypatch.setattr(segs, "SEGMENT_ROWS", 100)
    return Files(tmp_path / "store")


def test_many_small_files_share_few_segments_filled_in_file_order(files):
    parts = [files.add("g1", k, 12, seed=k) for k in range(20)]  # 240 rows: 8 files (96 rows) a segment
    plan, built, removed = files.build(parts, "g1")
    assert [fis for _, fis, _ in built] == [list(range(0, 8)), list(range(8, 16)), list(range(16, 20))]
    assert all(new for _, _, new in built) and removed == [] and plan.reused == []
    assert files.read == [p.path for p in parts]  # each file read once, in file order
    names = _segments(files.store, "g1")
    assert len(names) == 6 and all(n.startswith("seg-") for n in names)
    sidecar = json.loads(built[1][0].sidecar_path.read_text())
    assert [f["data"] for f in sidecar["files"]] == [f"gens/g1/data/{k:05d}.parquet" for k in range(8, 16)]
    assert sidecar["rows"] == 96 and sidecar["bytes"] == built[1][0].index_path.stat().st_size
    # Built again: everything is reused, nothing read.
    plan, again, _ = files.build(parts, "g1")
    assert files.read == [] and [s.index_path for s, _, new in again if not new] == [s.index_path for s, _, _ in built]


def test_a_new_version_indexes_only_its_new_files_and_keeps_the_segments_it_holds(files):
    day1 = [files.add("g1", k, 30, seed=k) for k in range(6)]  # 180 rows: segments of 90
    files.build(day1, "g1")
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (files.store / "gens" / "g1").rglob("index/*/*")}
    day2 = day1 + [files.add("g2", 0, 10, seed=100)]
    plan, built, removed = files.build(day2, "g2")
    assert files.read == [day2[-1].path] and _rows((plan, built)) == 10
    assert [(fis, new) for _, fis, new in built] == [([0, 1, 2], False), ([3, 4, 5], False), ([6], True)]
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) == s for p, s in before.items())
    assert len(_segments(files.store, "g2")) == 2 and removed == []
    # A version that leaves a file out no longer uses the segment that holds it: its other files are indexed again.
    day3 = [*day1[:4], *day1[5:], files.add("g3", 0, 10, seed=200)]
    plan, built, _ = files.build(day3, "g3")
    assert sorted(files.read) == sorted([day1[3].path, day1[5].path, day3[-1].path])
    assert [(fis, new) for _, fis, new in built][0] == ([0, 1, 2], False)


def test_small_segments_are_merged_once_a_tier_holds_merge_factor_of_them(files):
    parts = [files.add("g0", 0, 60, seed=0)]  # a segment of 60 rows: at or above a quarter, never merged
    files.build(parts, "g0")
    gens = []
    for day in range(1, segs.MERGE_FACTOR + 1):
        gens.append(f"g{day}")
        parts = parts + [files.add(f"g{day}", 0, 5, seed=day)]  # 5 rows a version: tier 2 of 100 (6.25 to 25 rows: 1)
        plan, built, removed = files.build(parts, f"g{day}")
        if day < segs.MERGE_FACTOR:
            assert _rows((plan, built)) == 5 and plan.merged == [] and len(built) == day + 1
    # The fourth small segment: the four versions' files are indexed again as one segment of 20 rows.
    assert [len(s.files) for s in plan.merged] == [1] * (segs.MERGE_FACTOR - 1)
    assert [(fis, new) for _, fis, new in built] == [([0], False), ([1, 2, 3, 4], True)]
    assert _rows((plan, built)) == 20 and files.read == [p.path for p in parts[1:]]
    assert removed == []  # the merged segments were other generations': theirs, left to them
    assert len(_segments(files.store, f"g{segs.MERGE_FACTOR}")) == 2
    # Built again: the merged segment is reused as it is.
    plan, built, removed = files.build(parts, f"g{segs.MERGE_FACTOR}")
    assert plan.build == [] and removed == []


def test_the_segment_count_grows_with_the_rows_and_each_row_is_re_added_a_few_times(files):
    parts, re_added, counts = [], 0, []
    for day in range(60):
        parts = parts + [files.add(f"g{day}", 0, 3, seed=day)]  # 3 rows a version
        plan, built, _ = files.build(parts, f"g{day}")
        re_added += sum(s.rows for s in plan.merged)
        counts.append(len(built))
    assert sum(p.chunks for p in parts) == 180
    assert max(counts) <= 180 // 100 + 1 + (segs.MERGE_FACTOR - 1) * segs.TIERS and counts[-1] <= 6
    assert re_added <= 180 * 3, re_added


def test_a_killed_build_resumes_from_its_finished_segments(files):
    parts = [files.add("g1", k, 25, seed=k) for k in range(8)]  # 200 rows: segments of 100

    class Killed(Exception):
        pass

    def dies_on_the_second_segment(part):  # noqa: ANN001, ANN202
        if part.shard == 4:
            raise Killed
        return files.batches(part)

    with pytest.raises(Killed):
        segs.build_segments(parts, FORM, files.store, files.store / "gens" / "g1", dies_on_the_second_segment)
    assert len(_segments(files.store, "g1")) == 2  # the first segment, finished; no temp left
    plan, built, _ = files.build(parts, "g1")
    assert [(fis, new) for _, fis, new in built] == [([0, 1, 2, 3], False), ([4, 5, 6, 7], True)]
    assert files.read == [p.path for p in parts[4:]]


def _found(files: Files, parts: list[Part], gen: str, dropped: dict[int, np.ndarray] | None = None):  # noqa: ANN202
    dropped = dropped or {}
    return ann.open_index(parts, FORM, files.store, files.store / "gens" / gen, lambda fi: dropped.get(fi, np.zeros(0, dtype=np.int64)), gen)


def test_search_through_segments_finds_what_the_exact_scan_finds_and_reads_values_back(files, monkeypatch):
    monkeypatch.setattr(segs, "SEGMENT_ROWS", 400)
    parts = [files.add("g1", k, 90 + k, seed=k) for k in range(9)]  # about 2 segments and a bit
    files.build(parts, "g1")
    index, note = _found(files, parts, "g1")
    assert note is None and len(index.segments) == 3
    every = np.concatenate([files.vectors[p.path] for p in parts])
    where = [(fi, r) for fi, p in enumerate(parts) for r in range(p.chunks)]
    queries = np.random.default_rng(7).standard_normal((40, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    found = index.candidates(Scorer(queries, FORM), 10)
    exact = np.argsort(-(queries @ every.T), axis=1)[:, :10]
    wanted = [{(where[i][0] << 32) | where[i][1] for i in q} for q in exact]
    recall = np.mean([len(set(f.tolist()) & w) / 10 for f, w in zip(found, wanted)])
    assert recall >= 0.95, recall
    flat = found.reshape(-1)
    rows = np.array([sum(p.chunks for p in parts[: int(q >> 32)]) + int(q & 0xFFFFFFFF) for q in flat])
    assert np.array_equal(index.values(flat), every[rows])


def test_dropped_rows_of_a_file_in_a_shared_segment_never_come_back(files):
    parts = [files.add("g1", k, 20, seed=k) for k in range(4)]
    files.build(parts, "g1")
    queries = files.vectors[parts[2].path][:5]  # each nearest to itself, in file 2
    dropped = {2: np.arange(20)}
    kept = [Part(p.gen, p.shard, p.path, p.sha256, 0, p.rows, p.chunks, drop=["x"] if fi == 2 else None, dropped_chunks=20 if fi == 2 else 0)
            for fi, p in enumerate(parts)]
    index, note = _found(files, kept, "g2", dropped)
    assert note is None and len(index.segments) == 1
    found = index.candidates(Scorer(queries, FORM), 10)
    assert (found >= 0).all() and not ((found >> 32) == 2).any()


def test_a_file_no_segment_covers_is_named_and_the_generation_scanned(files):
    parts = [files.add("g1", k, 30, seed=k) for k in range(6)]  # segments [0-2] and [3-5]
    plan, built, _ = files.build(parts, "g1")
    assert _found(files, parts, "g1")[1] is None
    built[1][0].sidecar_path.unlink()  # a graph without its sidecar is never used
    index, note = _found(files, parts, "g1")
    assert index is None and "the index of float32 covers 3 of 6 data files (shards 3,4,5 not indexed)" in note
    files.build(parts, "g1")
    rewritten = [*parts[:4], Part("g1", 4, parts[4].path, "other", 0, 30, 30), parts[5]]
    index, note = _found(files, rewritten, "g1")
    assert index is None and "built from other data than the store holds now (shards 4 rewritten; shards 3,5 indexed only together with them)" in note
    plan, built, removed = files.build(rewritten, "g1")
    assert [(fis, new) for _, fis, new in built] == [([0, 1, 2], False), ([3, 4, 5], True)]
    assert len(removed) == 2  # the stale segment's sidecar and graph
    assert _found(files, rewritten, "g1")[1] is None


def test_a_graph_per_data_file_from_before_segments_is_read_as_a_segment_of_that_file(files):
    from usearch.index import Index

    parts = [files.add("g1", k, 30, seed=k) for k in range(3)]
    where = files.store / "gens" / "g1" / "index" / "embedding"
    where.mkdir(parents=True)
    for part in parts:  # the layout before segments: NNNNN.usearch keyed by row, NNNNN.json naming one data file
        graph = Index(ndim=DIM, metric="ip", dtype="f32")
        graph.add(np.arange(part.chunks, dtype=np.uint64), files.vectors[part.path])
        graph.save(str(where / f"{part.shard:05d}.usearch"))
        (where / f"{part.shard:05d}.json").write_text(json.dumps({
            "form": "float32", "column": "embedding", "metric": "ip", "scalar": "f32", "dim": DIM, "rows": part.chunks,
            "data": f"gens/g1/data/{part.shard:05d}.parquet", "sha256": part.sha256,
            "bytes": (where / f"{part.shard:05d}.usearch").stat().st_size}))
    index, note = _found(files, parts, "g1")
    assert note is None and len(index.segments) == 3
    query = files.vectors[parts[1].path][4:5]
    assert index.candidates(Scorer(query, FORM), 1)[0, 0] == (1 << 32) | 4
    plan, built, removed = files.build(parts, "g1")  # 90 rows: reused as they are, merged only once MERGE_FACTOR are small
    assert plan.build == [] and removed == [] and files.read == []
