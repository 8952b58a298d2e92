"""`wikiembed eval --queries`: the user's judged queries scored on a store of real text (Python's reference
topics, embedded by the real flow with the bundled model), checked against the hits `search` returns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from wikiembed.flows.cli import main
from wikiembed.flows.embed_dataset import embed_dataset
from wikiembed.search import search

QUERIES = [
    {"query": "leave the innermost loop early", "id": "break"},
    {"query": "skip the rest of this loop iteration", "id": "continue"},
    {"query": "repeat while a condition holds", "ids": ["while", "break"]},
    {"query": "numbers with a decimal point and exponent", "id": "floating", "chunk_index": 0},
    {"query": "anonymous function expression", "id": "lambda"},
    {"query": "generator functions hand back values", "id": "yield"},
    {"query": "a topic this store does not have", "id": "no-such-topic"},
]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _expected(store: Path, row: dict) -> dict[str, float]:
    """The metrics of one query computed by hand from `search`'s own top 10."""
    relevant = {(i, None) for i in row.get("ids", [])} | ({(row["id"], row.get("chunk_index"))} if "id" in row else set())
    hits = search(store, row["query"], k=10).hits
    credited, first, dcg = set(), 0, 0.0
    for rank, hit in enumerate(hits, 1):
        key = (hit.id, hit.chunk_index) if (hit.id, hit.chunk_index) in relevant else (hit.id, None)
        if key in relevant and key not in credited:
            credited.add(key)
            dcg += 1 / math.log2(rank + 1)
            first = first or rank
    ideal = sum(1 / math.log2(r + 1) for r in range(1, min(len(relevant), 10) + 1))
    return {"recall_at_1": float(first == 1), "recall_at_10": float(first > 0), "mrr": 1 / first if first else 0.0,
            "ndcg_at_10": dcg / ideal}


def test_judged_queries_are_scored_as_search_ranks_them(compact_store, tmp_path, capsys):
    queries, out = _write(tmp_path / "queries.jsonl", QUERIES), tmp_path / "eval.json"
    assert main(["eval", "--store", str(compact_store), "--queries", str(queries), "--no-record", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    result = json.loads(out.read_text())
    assert result["n"] == 6 and result["queries_read"] == 7 and result["queries_unmatched"] == 1
    assert "1 of 7 queries name no article or chunk of the store" in captured.err
    assert "6 judged queries" in captured.out and "nDCG@10" in captured.out
    per_query = [_expected(compact_store, row) for row in QUERIES[:6]]
    for metric in ("recall_at_1", "recall_at_10", "mrr", "ndcg_at_10"):
        assert result[metric] == pytest.approx(sum(q[metric] for q in per_query) / 6), metric
        lo, hi = result[metric + "_ci95"]
        assert lo <= result[metric] <= hi
    assert result["recall_at_10"] >= 0.8  # the model finds these sections by meaning


def test_queries_against_a_second_store_give_paired_differences(compact_store, topics, tmp_path, prefect_api):
    other = tmp_path / "chars"
    embed_dataset(source=str(topics), store=str(other), shard_rows=50, chunking={"chunker": "chars", "chunk_size": 200})
    queries, out = _write(tmp_path / "queries.jsonl", QUERIES), tmp_path / "against.json"
    assert main(["eval", "--store", str(compact_store), "--against", str(other), "--queries", str(queries),
                 "--no-record", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == result["against"]["n"] == 6
    diff = result["difference"]["forms"][0]
    for metric in ("recall_at_1", "recall_at_10", "mrr", "ndcg_at_10"):
        assert diff[metric] == pytest.approx(result["against"][metric] - result[metric])
        lo, hi = diff[metric + "_ci95"]
        assert -1 <= lo <= diff[metric] <= hi <= 1


def test_queries_eval_is_recorded_in_the_card(compact_store, tmp_path):
    queries = _write(tmp_path / "queries.jsonl", QUERIES)
    try:
        assert main(["eval", "--store", str(compact_store), "--queries", str(queries)]) == 0
        card = (compact_store / "README.md").read_text()
        assert "6 judged queries (of 7 in the file" in card and "| nDCG@10 |" in card
    finally:  # the shared store's card goes back to the title check other tests read
        assert main(["eval", "--store", str(compact_store), "--sample", "10"]) == 0


@pytest.mark.parametrize(
    "rows, needle",
    [
        ([{"query": "q", "id": "no-such-topic"}], "none of the 1 queries has a relevant article in store"),
        ([{"query": "q"}], "no relevant \"id\" or \"ids\""),
    ],
)
def test_bad_queries_exit_2_with_one_message(compact_store, tmp_path, capsys, rows, needle):
    before = (compact_store / "README.md").read_text()
    queries = _write(tmp_path / "queries.jsonl", rows)
    assert main(["eval", "--store", str(compact_store), "--queries", str(queries)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("error:") == 1
    assert (compact_store / "README.md").read_text() == before  # nothing recorded
