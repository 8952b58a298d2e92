"""The records steps hand each other: each one's JSON is what the files and `--json` held before (keys, order, values)."""

from __future__ import annotations

import json
import pickle

import pytest

from wikiembed.results import (
    Exported, Figures, FinetuneRecord, ImproveResult, Published, ReembedCounts, RunSummary, StatusPayload,
    StoreFigures,
)
from wikiembed.store_results import GenerationView, Planned

SUMMARY = {
    "store": "/tmp/s", "generation": "4f9cd45925543316", "source": "sample:300", "model": "m", "revision": "sha256:cc",
    "backend": "local", "device": "cpu", "chunking": {"chunker": "tokens", "chunk_size": 256, "chunk_overlap": 0},
    "tokenizer": "blingfire", "shards_total": 3, "shards_done": 2, "shards_failed": 1, "failed_shards": [2],
    "pending_shards": [], "rows": 300, "skipped_rows": 0, "chunks": 507, "embedded_chunks": 507, "reused_chunks": 0,
    "kept_chunks": 0, "retries": 0, "seconds": 52.251, "chars_per_s": 6575.9,
    "changes": {"added": 3, "edited": 1, "removed": 1},
    "eval": {"n": 10, "recall_at_1": 0.5, "recall_at_10": 0.9, "mrr": 0.6},
    "index": [{"form": "int8", "rows": 507, "bytes": 1000, "seconds": 0.5, "parts_built": 3, "parts_reused": 0}],
    "predicted_vs_actual": {"chunks": {"predicted": 506, "predicted_ci95": [474, 537], "actual": 507},
                            "tokens": {"predicted": 81313, "predicted_ci95": [80787, 81840]},
                            "seconds": {"predicted": None, "actual": 52.3, "basis": "no rate recorded"}},
    "rerun_shards": [2], "rerun_done": [],
}
METRIC_BLOCK = {"recall_at_1": 0.5, "recall_at_1_ci95": [0.2, 0.8], "recall_at_10": 1.0, "recall_at_10_ci95": [0.6, 1.0],
                "mrr": 0.7, "mrr_ci95": [0.4, 0.9], "ndcg_at_10": 0.75, "ndcg_at_10_ci95": [0.5, 0.9]}
FINETUNE = {
    "out": "/m", "base_model": "b", "base_revision": "r", "store": "/s", "generation": "g", "chunks": 40, "pairs_file": "p",
    "pairs": {"read": 45, "matched": 44, "unmatched": 1, "relevant_missing": 1, "near_duplicates": 10},
    "train": 27, "holdout": 7, "examples": 27, "negatives_from": "exact scan", "loss": "MultipleNegativesRankingLoss",
    "settings": {"epochs": 1, "batch_size": 8, "learning_rate": 2e-5, "holdout": 0.2, "seed": 0, "negatives": 1, "device": None},
    "device": "cpu", "train_loss": 0.4, "pool": 300, "before": {"n": 7, **METRIC_BLOCK}, "after": {"n": 7, **METRIC_BLOCK},
    "difference": {"meaning": "fine-tuned minus base, paired on the held-out queries", **METRIC_BLOCK},
    "seconds": 12.5, "inputs": {"store": "/s", "generation": "g", "pairs_sha256": "ab", "base_revision": "r", "settings": {}},
}
STORE_FIGURES = {"store": "/s", "generation": "g", "model": "m", "n": 7,
                 **{m: METRIC_BLOCK[m] for m in ("recall_at_1", "recall_at_10", "mrr", "ndcg_at_10")},
                 **{m + "_ci95": METRIC_BLOCK[m + "_ci95"] for m in ("recall_at_1", "recall_at_10", "mrr", "ndcg_at_10")}}
IMPROVE = {"publish": True, "reason": "better", "published": None, "served": None, "metric": "mrr", "margin": 0.01,
           "old": STORE_FIGURES, "new": STORE_FIGURES, "difference": {"form": "float32", **METRIC_BLOCK}, "finetune": FINETUNE,
           "reembed": {"chunks": 40, "embedded_chunks": 40, "reused_chunks": 0, "shards_done": 3, "shards_total": 3}}
PUBLISHED = {"target": "dir:/out", "files": 2, "bytes": 1486944, "data_files": ["data/train-00000-of-00001.parquet"],
             "shards": 3, "rows": 507, "generation": "g", "building": None, "url": "/out", "committed": True}
EXPORTED = {"promoted": True, "published": PUBLISHED}
PLANNED = {"store": "/s", "gen": "g2", "previous_gen": "g", "changes": {"added": 3, "edited": 1, "removed": 0}}
VIEW = {"gen": "g", "manifest": {"source": {"spec": "sample:300"}, "plan": {"shards": [[0, 100]]}},
        "states": [{"shard": 0, "state": "done", "rows": 100, "chunks": 151, "error": None, "attempts": 0}],
        "pointers": {"current": "g", "next": None}}
STATUS = {
    "store": "/s", "generation": "g", "source": "sample:300", "model": "m",
    "chunking": {"chunker": "tokens", "chunk_size": 256, "chunk_overlap": 0}, "skipped_rows": 3, "skipped": {"blank text": 3},
    "repaired": {}, "shards": [{"shard": 0, "state": "done", "rows": 100, "chunks": 151, "error": None, "attempts": 0},
                               {"shard": 1, "state": "changed", "rows": 100, "chunks": None, "error": "data file changed", "attempts": 0}],
    "done": 1, "failed": 0, "pending": 0, "changed": 1, "published": "g", "building": None,
    "kept": {"files": 0, "chunks": 0, "generations": 0, "damaged": []},
}


@pytest.mark.parametrize("kind, payload", [
    (RunSummary, SUMMARY), (FinetuneRecord, FINETUNE), (ImproveResult, IMPROVE), (StatusPayload, STATUS),
    (StoreFigures, STORE_FIGURES), (Figures, FINETUNE["difference"]), (Published, PUBLISHED), (Exported, EXPORTED),
    (Exported, {"promoted": False, "published": None}), (ImproveResult, {**IMPROVE, "published": EXPORTED}),
    (Planned, PLANNED), (GenerationView, VIEW),
    (StatusPayload, {**STATUS, "building": {"generation": "g2", "path": "/s/gens/g2", "source": "sample:300", "total": 3,
                                            "done": 1, "failed": 0}}),
    (Published, {**PUBLISHED, "building": {"generation": "g2", "path": "/s/gens/g2", "error": "StoreError: unreadable"}}),
])
def test_json_round_trips_byte_for_byte_and_records_pickle(kind, payload):
    record = kind.from_json(payload)
    assert json.dumps(record.to_json(), indent=1) == json.dumps(payload, indent=1)  # same keys, order and values
    assert pickle.loads(pickle.dumps(record)) == record  # a Prefect task may return one


def test_keys_a_summary_holds_only_sometimes_stay_out_until_set():
    base = {k: v for k, v in SUMMARY.items()
            if k not in ("changes", "eval", "index", "predicted_vs_actual", "rerun_shards", "rerun_done")}
    summary = RunSummary.from_json(base)
    assert list(summary.to_json()) == list(base) and summary.eval is None and summary.rerun_shards is None
    assert list(summary.replace(rerun_shards=(), rerun_done=()).to_json())[-2:] == ["rerun_shards", "rerun_done"]
    assert not summary.complete and summary.replace(shards_done=3, shards_failed=0).complete


def test_attributes_and_figures_by_name():
    summary = RunSummary.from_json(SUMMARY)
    assert summary.failed_shards == (2,) and summary.index[0].parts_built == 3
    assert summary.predicted_vs_actual.seconds.predicted_text() == "not estimated"
    record = FinetuneRecord.from_json(FINETUNE)
    assert record.pairs.near_duplicates == 10 and record.before.n == 7 and record.difference.n is None
    assert record.after.value("mrr") == 0.7 and record.after.interval("mrr") == (0.4, 0.9)
    with pytest.raises(KeyError):
        record.after.value("n")
    older = {**FINETUNE, "pairs": {k: v for k, v in FINETUNE["pairs"].items() if k != "near_duplicates"}}
    assert FinetuneRecord.from_json(older).to_json() == older  # a record written before the field: read and written alike
    status = StatusPayload.from_json(STATUS)
    assert status.shards[1].state == "changed" and not status.healthy


def _block(store: str) -> dict:
    """One store's block of `wikiembed eval --json`: the headline in StoreFigures' order, with chunks after the model."""
    figures = {k: v for k, v in STORE_FIGURES.items() if k not in ("store", "generation", "model")}
    form = {"form": "float32", "column": "embedding", "bytes_per_vector": 1536, "rescore": None, "method": "exact",
            "index_note": None, "n": 7, **METRIC_BLOCK}
    return {"store": store, "generation": "g", "model": "m", "chunks": 40, **figures, "method": "exact", "forms": [form]}


EVAL_TITLES = {**_block("/s"), "seed": 0, "query": "title", "hit": "any chunk of the article in the top k", "k": 10}
EVAL_AGAINST = {**_block("/s"), "query": "file", "queries_file": "held.jsonl", "queries_read": 9, "queries_unmatched": 2,
                "relevant_missing": 2, "hit": "a relevant article or chunk in the top k", "k": 10, "against": _block("/new"),
                "difference": {"meaning": "against minus this store", "forms": [{"form": "float32", **METRIC_BLOCK}]}}


@pytest.mark.parametrize("payload", [EVAL_TITLES, EVAL_AGAINST])
def test_an_eval_result_round_trips_its_json(payload):
    from wikiembed.evaluate import EvalResult

    result = EvalResult.from_json(payload)
    assert json.dumps(result.to_json(), indent=1) == json.dumps(payload, indent=1)
    assert pickle.loads(pickle.dumps(result)) == result
    assert result.forms[0].interval("mrr") == (0.4, 0.9)


def test_a_comparison_from_evaluates_result():
    from wikiembed.evaluate import EvalResult

    compared = EvalResult.from_json(EVAL_AGAINST).comparison()
    assert compared.new.store == "/new" and compared.difference.form == "float32"
    assert compared.old.to_json() == {**STORE_FIGURES, "store": "/s"}
    assert ReembedCounts.of(RunSummary.from_json(SUMMARY)).to_json() == {
        "chunks": 507, "embedded_chunks": 507, "reused_chunks": 0, "shards_done": 2, "shards_total": 3}


def test_what_the_store_steps_answer_reads_back_from_the_json_a_container_sends():
    improved = ImproveResult.from_json({**IMPROVE, "published": EXPORTED})
    assert improved.published.published.data_files == ("data/train-00000-of-00001.parquet",)
    view = GenerationView.from_json(VIEW)
    assert view.states[0].chunks == 151 and view.pointers["current"] == "g"
    older = GenerationView.from_json({k: v for k, v in VIEW.items() if k != "pointers"})  # an app deployed before pointers
    assert older.pointers == {}
    assert Planned.from_json(PLANNED).replace(store="modal:v/s").to_json() == {**PLANNED, "store": "modal:v/s"}
