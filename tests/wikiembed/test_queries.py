"""Judged-queries files: the formats read, rows merged, ids matched against a real store's files, the held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wikiembed.errors import InputError
from wikiembed.queries import JudgedQuery, match, read_queries, split_holdout, store_keys


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_each_row_shape_reads_and_rows_of_one_query_merge(tmp_path):
    path = _jsonl(tmp_path / "q.jsonl", [
        {"query": "who wrote Hamlet", "id": "7"},
        {"query": "tides", "ids": ["1", "2"]},
        {"query": "who wrote Hamlet", "id": "8", "chunk_index": 3},
        "",
        {"query": "  moon  ", "id": 5},
    ])
    got = read_queries(path)
    assert got == [
        JudgedQuery("who wrote Hamlet", frozenset({("7", None), ("8", 3)})),
        JudgedQuery("tides", frozenset({("1", None), ("2", None)})),
        JudgedQuery("moon", frozenset({("5", None)})),
    ]
    table = pa.table({"query": ["tides", "moon"], "ids": [["1", "2"], ["5"]]})
    pq.write_table(table, tmp_path / "q.parquet")
    assert read_queries(tmp_path / "q.parquet") == [got[1], got[2]]


@pytest.mark.parametrize(
    "rows, needle",
    [
        (["{not json"], "line 1: not JSON"),
        ([{"id": "1"}], r'line 1: no "query" \(its fields: id\)'),
        ([{"query": " ", "id": "1"}], "line 1: no query text"),
        ([{"query": "a"}], "no relevant \"id\" or \"ids\""),
        ([{"query": "a", "ids": "1"}], "\"ids\" must be a list"),
        ([{"query": "a", "id": "1", "chunk_index": -1}], "is not a chunk number"),
        ([], "is empty"),
    ],
)
def test_a_bad_file_is_refused_naming_the_row_and_the_format(tmp_path, rows, needle):
    with pytest.raises(InputError, match=needle) as err:
        read_queries(_jsonl(tmp_path / "q.jsonl", rows))
    assert str(tmp_path / "q.jsonl") in str(err.value)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_queries(tmp_path / "none.jsonl")
    (tmp_path / "q.csv").write_text("query,id\n")
    with pytest.raises(InputError, match="give a .jsonl or .parquet file"):
        read_queries(tmp_path / "q.csv")


def test_matching_keeps_what_the_store_holds_and_counts_the_rest(tmp_path):
    data = tmp_path / "00000.parquet"
    pq.write_table(pa.table({"id": ["a", "a", "b"], "chunk_index": [0, 1, 0]}), data)
    keys = store_keys(pq.ParquetFile(data).iter_batches())
    assert keys == {("a", None), ("a", 0), ("a", 1), ("b", None), ("b", 0)}
    queries = [
        JudgedQuery("q1", frozenset({("a", None), ("zz", None)})),
        JudgedQuery("q2", frozenset({("b", 4)})),  # b has no chunk 4
        JudgedQuery("q3", frozenset({("a", 1)})),
    ]
    matched = match(queries, keys, "store S")
    assert [q.text for q in matched.queries] == ["q1", "q3"]
    assert matched.queries[0].relevant == frozenset({("a", None)})
    assert (matched.read, matched.unmatched, matched.missing_items) == (3, 1, 2)
    with pytest.raises(InputError, match="none of the 1 queries has a relevant article in store S"):
        match([queries[1]], keys, "store S")
    # Read for the keys the queries name: only those the store holds are kept, and the match is the same.
    named = {key for q in queries for key in q.relevant}
    few = store_keys(pq.ParquetFile(data).iter_batches(batch_size=1), named)
    assert few == {("a", None), ("a", 1)}
    assert match(queries, few, "store S") == matched
    assert store_keys(pq.ParquetFile(data).iter_batches(), set()) == set()


def test_holdout_is_seeded_disjoint_and_independent_of_order():
    queries = [JudgedQuery(f"q{i}", frozenset({(str(i), None)})) for i in range(50)]
    train, held = split_holdout(queries, 0.2, seed=3)
    assert len(held) == 10 and len(train) == 40 and not {q.text for q in train} & {q.text for q in held}
    again_train, again_held = split_holdout(list(reversed(queries)), 0.2, seed=3)
    assert {q.text for q in again_held} == {q.text for q in held}
    assert {q.text for q in split_holdout(queries, 0.2, seed=4)[1]} != {q.text for q in held}
    with pytest.raises(InputError, match="holds out none"):
        split_holdout(queries[:2], 0.2, seed=0)
    with pytest.raises(InputError, match="between 0 and 1"):
        split_holdout(queries, 0.0, seed=0)


def test_files_in_other_encodings_or_cut_short_are_refused_naming_the_file_and_the_fix(tmp_path):
    rows = '{"query": "Zürich café", "id": "1"}\n'
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + rows.encode())  # UTF-8 with a byte-order mark (as sources accept)
    assert read_queries(bom) == [JudgedQuery("Zürich café", frozenset({("1", None)}))]
    for name, data, needle in [
        ("utf16.jsonl", rows.encode("utf-16"), "is UTF-16 text, not UTF-8; save it as UTF-8"),
        ("latin1.jsonl", rows.encode("latin-1"), "line 1: not UTF-8 text .* save the file as UTF-8"),
    ]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match=needle) as err:
            read_queries(tmp_path / name)
        assert str(tmp_path / name) in str(err.value)
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.table({"query": ["a"], "id": ["1"]}), whole)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(InputError, match=r"cut.parquet: not a readable parquet file .* write or copy it again"):
        read_queries(cut)
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"question": ["a"], "doc": ["1"]}), other)
    with pytest.raises(InputError, match=r'other.parquet: has columns question, doc but no "query"'):
        read_queries(other)
