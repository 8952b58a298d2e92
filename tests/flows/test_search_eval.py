"""Compact forms written in the run, then search and eval on them: real text (Python's reference
topics), the real flow and the bundled model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from wikiembed.flows.cli import main
from wikiembed.flows.embed_dataset import embed_dataset
from wikiembed.search import StoreVectors

FORMS = ["float32", "float16", "int8", "binary", "float32@128", "float16@128", "int8@128", "binary@128"]


def _all(store: Path):
    return pq.read_table(store / "data")


def test_run_writes_every_form_from_the_same_vectors(compact_store):
    table = _all(compact_store)
    manifest = json.loads((compact_store / "manifest.json").read_text())
    assert manifest["compact"]["dimensions"] == [384, 128]
    assert set(manifest["compact"]["int8"]["ranges"]) == {"384", "128"}
    cal = manifest["compact"]["int8"]["ranges"]["128"]
    assert len(cal["min"]) == 128
    full = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    t = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    assert np.allclose(np.stack(table.column("embedding_128_float32").to_numpy(zero_copy_only=False)), t, atol=1e-6)
    assert np.allclose(np.stack(table.column("embedding_128_float16").to_numpy(zero_copy_only=False)).astype(np.float32), t, atol=1e-3)
    codes = np.stack(table.column("embedding_128_int8").to_numpy(zero_copy_only=False)).astype(np.float32)
    lo, hi = np.array(cal["min"]), np.array(cal["max"])
    back = (codes + 128) * (hi - lo) / 255 + lo
    inside = (t >= lo) & (t <= hi)  # values beyond the calibration sample's range are clipped
    assert np.abs(back - t)[inside].max() <= (hi - lo).max() / 255 / 2 + 1e-5 and inside.mean() > 0.95
    bits = np.stack(table.column("embedding_128_binary").to_numpy(zero_copy_only=False))
    assert bits.shape[1] == 16 and np.array_equal(np.unpackbits(bits, axis=1).astype(bool), t > 0)
    card = (compact_store / "README.md").read_text()
    assert "## Compact forms" in card and "`embedding_128_int8`" in card and "`embedding_binary`" in card
    ranges = json.loads(card.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert ranges == manifest["compact"]["int8"]["ranges"]  # a reader of the card can map int8 back
    assert table.column("embedding_int8").type.list_size == 384 and table.column("embedding_binary").type.list_size == 48


@pytest.mark.parametrize("form", FORMS)
def test_batched_scan_equals_brute_force(compact_store, form, monkeypatch):
    import wikiembed.search as search_mod
    from wikiembed.compact import Scorer, column_values

    monkeypatch.setattr(search_mod, "SCAN_ROWS", 7)  # many batches per file, three files
    vectors = StoreVectors(compact_store)
    queries = vectors.embed_queries(["how do I leave a loop early", "integer literal syntax", "decorators"])
    f = vectors.form(form)
    scores, positions = vectors.scan(queries, 5, f, rescore=3)
    table = _all(compact_store)
    stored = column_values(table.column(f.column), f)
    scorer = Scorer(queries, f, vectors.int8_calibration)
    full = scorer.score(stored)
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in vectors.files]
    flat = np.concatenate([(np.int64(i) << 32) | np.arange(n) for i, n in enumerate(sizes)])
    where = {int(p): i for i, p in enumerate(flat)}
    for q in range(len(queries)):
        idx = [where[int(p)] for p in positions[q]]
        if f.precision == "binary":
            # The returned rows are the best rescored among Hamming's top 15 (ties at the cut may go either way).
            assert np.allclose(scores[q], scorer.rescore(stored[idx])[q], atol=1e-5)
            cutoff = np.sort(full[q])[::-1][14]
            assert (full[q][idx] >= cutoff - 1e-6).all()
            sure = np.flatnonzero(full[q] > cutoff + 1e-6)
            assert scores[q][0] >= scorer.rescore(stored[sure])[q].max() - 1e-5
        else:
            assert np.allclose(scores[q], np.sort(full[q])[::-1][:5], atol=1e-5)
            assert np.allclose(full[q][idx], scores[q], atol=1e-5)


def test_search_cli_prints_and_writes_hits(compact_store, tmp_path, capsys):
    out = tmp_path / "hits.json"
    assert main(["search", "--store", str(compact_store), "leave the innermost loop", "-k", "3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert len(result["hits"]) == 3
    assert set(result["hits"][0]) >= {"score", "id", "title", "url", "chunk_index", "text"}
    assert result["hits"][0]["id"] == "break"
    assert "The \"break\" statement" in printed
    scores = [h["score"] for h in result["hits"]]
    assert scores == sorted(scores, reverse=True)
    binary = tmp_path / "binary.json"
    assert main(["search", "--store", str(compact_store), "leave the innermost loop", "-k", "3", "--form", "binary@128",
                 "--json", str(binary)]) == 0
    # 16 bytes a vector still put the right section among the first three.
    assert "break" in [h["id"] for h in json.loads(binary.read_text())["hits"]]


def test_eval_reports_each_form_and_records_it_in_the_card(compact_store, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--store", str(compact_store), "--forms", "all", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 34  # every article: fewer than the default sample
    names = [f["form"] for f in result["forms"]]
    assert names == [*FORMS, "binary (hamming only)", "binary@128 (hamming only)"]
    by = {f["form"]: f for f in result["forms"]}
    for f in result["forms"]:
        assert 0 <= f["recall_at_1"] <= f["recall_at_10"] <= 1 and f["recall_at_1"] <= f["mrr"] <= f["recall_at_10"]
        lo, hi = f["recall_at_10_ci95"]
        assert lo <= f["recall_at_10"] <= hi
    assert by["float32"]["recall_at_10"] >= 0.8  # titles find their own reference section
    assert by["float32"]["bytes_per_vector"] == 1536 and by["binary@128"]["bytes_per_vector"] == 16
    assert (result["recall_at_1"], result["recall_at_10"], result["mrr"]) == (
        by["float32"]["recall_at_1"], by["float32"]["recall_at_10"], by["float32"]["mrr"])
    card = (compact_store / "README.md").read_text()
    assert "## Retrieval check" in card and "| int8@128 | 128 |" in card
    assert "recall@10" in capsys.readouterr().out


def test_eval_against_a_second_store_pairs_the_same_articles(compact_store, topics, tmp_path, prefect_api):
    other = tmp_path / "chars"
    embed_dataset(source=str(topics), store=str(other), shard_rows=50, chunking={"chunker": "chars", "chunk_size": 400})
    out = tmp_path / "against.json"
    assert main(["eval", "--store", str(compact_store), "--against", str(other), "--sample", "20", "--no-record",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == result["against"]["n"] == 20
    diff = result["difference"]["forms"][0]
    assert diff["form"] == "float32"
    assert diff["recall_at_10"] == pytest.approx(result["against"]["recall_at_10"] - result["recall_at_10"])
    lo, hi = diff["mrr_ci95"]
    assert lo <= diff["mrr"] <= hi


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["search", "--store", "{missing}", "q"], "nothing is published there yet"),
        (["search", "--store", "{store}", "q", "--form", "int4"], "this store holds float32, float16, int8, binary, float32@128"),
        (["search", "--store", "{store}", "   "], "search query is empty"),
        (["eval", "--store", "{store}", "--sample", "0"], "--sample 0"),
        (["eval", "--store", "{store}", "--against", "{other}"], "different source"),
    ],
)
def test_bad_input_gets_one_clear_message(argv, needle, compact_store, tmp_path, prefect_api, capsys):
    other = tmp_path / "other"
    if "{other}" in argv:
        embed_dataset(source="sample:20", store=str(other))
    args = [a.format(store=compact_store, missing=tmp_path / "nope", other=other) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
