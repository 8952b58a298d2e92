"""The `improve-model` flow publishing a better model: real text (Python's reference topics, 9 shards) with the
bundled model, 2 epochs on the CPU. Split from test_improve_model.py (the rest of the flow) so that the two run
side by side on two xdist workers; each file has its own copy of the published store (`published_store`)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from tests.flows.test_improve_model import announced
from wikiembed.flows.improve_model import improve_model

LEET = str.maketrans({"a": "4", "e": "3", "o": "0", "i": "1", "s": "5", "t": "7"})


def test_a_better_model_is_published(published_store, topics, tmp_path):
    """Titles in leetspeak ("7h3 \"br34k\" 57473m3n7"): word pieces the base model has no meaning for, so it ranks
    poorly; two epochs teach the common words (statement, literals, operations), which the held-out titles share."""
    store, published = published_store
    rows = [{"query": r["title"].lower().translate(LEET), "id": r["id"]} for r in map(json.loads, topics.read_text().splitlines())]
    pairs = tmp_path / "leet.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, new = tmp_path / "model", tmp_path / "new-store"
    state = improve_model(str(store), str(pairs), str(out), str(new), upload_to=f"dir:{published}", metric="recall_at_10",
                          margin=0.05, finetune={"batch_size": 8, "epochs": 2, "learning_rate": 1e-4},
                          min_holdout=5, return_state=True)  # the 34 topics hold out 7
    result = state.result()
    print(json.dumps({k: result[k] for k in ("publish", "reason", "difference")}, indent=1))
    assert result["publish"] is True and result["published"] is not None, result["reason"]
    lo, _ = result["difference"]["recall_at_10_ci95"]
    assert result["difference"]["recall_at_10"] >= 0.05 and lo > 0
    run, events = announced(state, store)
    assert run.state.message == f"publish: {result['reason']}" and "decision:publish" in run.tags
    assert [e.event for e in events] == ["wikiembed.improve.published"] and events[0].payload["upload_to"] == f"dir:{published}"
    card = (published / "README.md").read_text()
    assert str(out.resolve()) in card  # the published folder now holds the fine-tuned model's vectors
    table = pq.read_table(published / "data")
    assert table.num_rows == pq.read_table(new / "data").num_rows
