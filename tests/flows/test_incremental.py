"""Incremental daily runs: unchanged, edited, added and removed articles; atomic switch; failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from wikiembed.errors import ShardsFailed
from wikiembed.flows.embed_dataset import embed_dataset, rerun_shards
from wikiembed.sample import generate_articles
from tests.flows import faults


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _table(store: Path):
    t = pq.read_table(store / "data")
    return t.sort_by([("id", "ascending"), ("chunk_index", "ascending")])


def _same_output(a: Path, b: Path) -> None:
    ta, tb = _table(a), _table(b)
    for col in ("id", "url", "title", "chunk_index", "char_start", "char_end", "text"):
        assert ta.column(col).to_pylist() == tb.column(col).to_pylist(), col
    va = np.array(ta.column("embedding").to_pylist(), dtype=np.float32)
    vb = np.array(tb.column("embedding").to_pylist(), dtype=np.float32)
    # reused vectors were computed in other batches: equal up to float rounding
    assert np.abs(va - vb).max() < 1e-5


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    root = tmp_path_factory.mktemp("inc")
    v1 = list(generate_articles(80))
    v2 = [dict(r) for r in v1]
    v2[10]["text"] = v2[10]["text"] + "\n\nA new closing paragraph about bridges and rivers."  # edited
    del v2[20]  # removed
    v2 += [dict(r, id=f"new-{i}", title=f"New {i}") for i, r in enumerate(generate_articles(3, seed=7))]  # added
    _write_jsonl(root / "v1.jsonl", v1)
    _write_jsonl(root / "v2.jsonl", v2)
    return root


def test_unchanged_edited_added_removed(prefect_api, versions, tmp_path):
    store = tmp_path / "store"
    first = embed_dataset(source=str(versions / "v1.jsonl"), store=str(store), shard_rows=20)
    assert first["shards_done"] == 4 and first["embedded_chunks"] == first["chunks"]

    again = embed_dataset(source=str(versions / "v1.jsonl"), store=str(store), shard_rows=20)
    assert again["embedded_chunks"] == 0 and again["shards_done"] == 4

    (versions / "live.jsonl").write_bytes((versions / "v2.jsonl").read_bytes())
    daily = embed_dataset(source=str(versions / "live.jsonl"), store=str(store), shard_rows=20)
    assert daily["changes"] == {"added": 3, "edited": 1, "removed": 1}
    assert daily["shards_done"] == daily["shards_total"]
    assert daily["reused_chunks"] > 0 and daily["embedded_chunks"] > 0
    # only chunks whose text is new were embedded
    clean_store = tmp_path / "clean"
    clean = embed_dataset(source=str(versions / "v2.jsonl"), store=str(clean_store), shard_rows=20)
    assert daily["embedded_chunks"] + daily["reused_chunks"] == clean["chunks"]
    assert daily["embedded_chunks"] < clean["chunks"] // 5
    _same_output(store, clean_store)
    # the old generation is gone once the new one is published
    assert len(list((store / "gens").iterdir())) == 1


def test_switch_is_atomic_and_failed_incremental_keeps_the_old_version(prefect_api, versions, tmp_path, monkeypatch):
    store = tmp_path / "store"
    embed_dataset(source=str(versions / "v1.jsonl"), store=str(store), shard_rows=20)
    before = _table(store)
    faulty = faults.install(monkeypatch, poison="A new closing paragraph")
    with pytest.raises(ShardsFailed, match="1/") as ended:
        embed_dataset(source=str(versions / "v2.jsonl"), store=str(store), shard_rows=20)
    summary = ended.value.summary
    assert summary["shards_failed"] == 1 and faulty.calls > 0
    # readers still see the complete old version, not half of each
    after = _table(store)
    assert after.column("text").to_pylist() == before.column("text").to_pylist()
    monkeypatch.undo()
    fixed = rerun_shards(store=str(store), shards="failed")
    assert fixed["shards_failed"] == 0
    clean_store = tmp_path / "clean"
    embed_dataset(source=str(versions / "v2.jsonl"), store=str(clean_store), shard_rows=20)
    _same_output(store, clean_store)
