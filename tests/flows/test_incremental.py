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
from tests.flows.conftest import copy_store


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _table(store: Path):
    """The published generation's rows (a kept file's dropped articles left out), as readers see them."""
    import pyarrow as pa

    from wikiembed.search import StoreVectors

    columns = ["id", "url", "title", "chunk_index", "char_start", "char_end", "text", "embedding"]
    t = pa.Table.from_batches(list(StoreVectors(store).live_batches(columns)))
    return t.sort_by([("id", "ascending"), ("chunk_index", "ascending")])


def _files(store: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(store)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in (store / "gens").rglob("*") if p.is_file()}


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
    v1 = list(generate_articles(40))  # 2 shards of 20
    v2 = [dict(r) for r in v1]
    v2[10]["text"] = v2[10]["text"] + "\n\nA new closing paragraph about bridges and rivers."  # edited
    del v2[20]  # removed
    v2 += [dict(r, id=f"new-{i}", title=f"New {i}") for i, r in enumerate(generate_articles(3, seed=7))]  # added
    _write_jsonl(root / "v1.jsonl", v1)
    _write_jsonl(root / "v2.jsonl", v2)
    return root


@pytest.fixture(scope="module")
def v1_store(prefect_api, versions, tmp_path_factory):
    """(store, summary) of a first run on v1: built once, copied by each test that runs on from it."""
    store = tmp_path_factory.mktemp("v1") / "store"
    return store, embed_dataset(source=str(versions / "v1.jsonl"), store=str(store), shard_rows=20)


@pytest.fixture(scope="module")
def clean_v2(prefect_api, versions, tmp_path_factory):
    """(store, summary) of v2 run from scratch, what an incremental run must equal: built once, only read."""
    store = tmp_path_factory.mktemp("clean-v2") / "store"
    return store, embed_dataset(source=str(versions / "v2.jsonl"), store=str(store), shard_rows=20)


def test_unchanged_edited_added_removed(prefect_api, versions, v1_store, clean_v2, tmp_path):
    store = copy_store(v1_store[0], tmp_path / "store")
    first = v1_store[1]
    assert first["shards_done"] == 2 and first["embedded_chunks"] == first["chunks"]

    again = embed_dataset(source=str(versions / "v1.jsonl"), store=str(store), shard_rows=20)
    assert again["embedded_chunks"] == 0 and again["shards_done"] == 2

    day1_files = _files(store)
    day1_texts = set(_table(store).column("text").to_pylist())
    (versions / "live.jsonl").write_bytes((versions / "v2.jsonl").read_bytes())
    daily = embed_dataset(source=str(versions / "live.jsonl"), store=str(store), shard_rows=20)
    assert daily["changes"] == {"added": 3, "edited": 1, "removed": 1}
    assert daily["shards_done"] == daily["shards_total"] == 1  # the 4 articles added or edited: one shard of its own
    clean_store, clean = clean_v2
    # only chunks whose text is new were embedded, counted from the outputs
    new_texts = [t for t in _table(clean_store).column("text").to_pylist() if t not in day1_texts]
    assert daily["embedded_chunks"] == len(new_texts) > 0
    assert daily["chunks"] + daily["kept_chunks"] == clean["chunks"]
    _same_output(store, clean_store)
    # Day 1's data files and markers are kept as they were (not one byte rewritten); the new generation
    # wrote its own shard, its snapshot of the 4 articles, its articles table and the dropped ids.
    after = _files(store)
    kept = {p: s for p, s in day1_files.items() if "/data/" in p or "/_done/" in p}
    assert kept and all(after.get(p) == s for p, s in kept.items())
    gen = daily["generation"]
    written = sorted(p.split("/", 2)[2] for p in after if p.startswith(f"gens/{gen}/"))
    assert written == [".wikiembed-card.json", "README.md", "_done/00000.json", "articles.parquet", "chunks/00000.parquet", "data/00000.parquet",
                       "dropped.parquet", "keys/00000.npz", "manifest.json", "snapshot/source.parquet"], written
    # Day 1's generation gained no file (its data files had their chunk keys from the start) and lost its chunks.
    assert {p for p in after if not p.startswith(f"gens/{gen}/")} == {p for p in day1_files if "/chunks/" not in p}
    old_gen = next(p.name for p in (store / "gens").iterdir() if p.name != gen)
    assert not (store / "gens" / old_gen / "chunks").exists()  # kept only for its data files
    # exported, the two stores are the same dataset
    from wikiembed.publish import publish

    a = publish(store, f"dir:{tmp_path / 'a'}")
    b = publish(clean_store, f"dir:{tmp_path / 'b'}")
    assert a.rows == b.rows == clean["chunks"]
    ta = pq.read_table(tmp_path / "a" / "data").sort_by([("id", "ascending"), ("chunk_index", "ascending")])
    tb = pq.read_table(tmp_path / "b" / "data").sort_by([("id", "ascending"), ("chunk_index", "ascending")])
    assert ta.column("text").to_pylist() == tb.column("text").to_pylist()
    assert ta.column("id").to_pylist() == tb.column("id").to_pylist()


def test_switch_is_atomic_and_failed_incremental_keeps_the_old_version(prefect_api, versions, v1_store, clean_v2, tmp_path, monkeypatch):
    store = copy_store(v1_store[0], tmp_path / "store")
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
    _same_output(store, clean_v2[0])


def test_versions_chain_search_verify_and_a_full_generation_when_much_changed(prefect_api, tmp_path):
    """Three source versions, each a generation keeping the files of the ones before (an article added on
    day 2 and edited on day 3 is dropped from day 2's file); search, index, eval and export see exactly
    the live rows; a damaged kept file is found by `status --verify` and refused by export; a version
    that changed most articles is a full generation, and the generations it no longer needs are deleted."""
    from wikiembed.errors import StoreError
    from wikiembed.flows.cli import main as cli_main
    from wikiembed.publish import publish
    from wikiembed.index_build import build_index
    from wikiembed.search import StoreVectors

    v1 = list(generate_articles(40))
    v2 = [dict(r) for r in v1]
    v2[5]["text"] += "\n\nA paragraph added on the second day."
    v2 += [dict(r, id=f"new-{i}", title=f"New {i}") for i, r in enumerate(generate_articles(2, seed=7))]
    v3 = [dict(r) for r in v2 if r["id"] != v1[7]["id"]]
    for r in v3:
        if r["id"] in ("new-0", v1[5]["id"]):
            r["text"] += "\n\nAnd one more on the third."
    store = tmp_path / "store"
    gens = []
    for day, rows in enumerate((v1, v2, v3), 1):
        _write_jsonl(tmp_path / "live.jsonl", rows)
        gens.append(embed_dataset(source=str(tmp_path / "live.jsonl"), store=str(store), shard_rows=20)["generation"])
    manifest = json.loads((store / "manifest.json").read_text())
    assert {b["gen"] for b in manifest["base"]} == {gens[0], gens[1]}
    assert manifest["changes"] == {"added": 0, "edited": 2, "removed": 1}
    assert sorted(p.name for p in (store / "gens").iterdir()) == sorted(gens)
    _write_jsonl(tmp_path / "v3.jsonl", v3)
    clean_store = tmp_path / "clean"
    embed_dataset(source=str(tmp_path / "v3.jsonl"), store=str(clean_store), shard_rows=20)
    _same_output(store, clean_store)
    # Each generation's articles table holds the rows of its own snapshot only (a day writes what changed);
    # its live articles, those and the kept generations' less what it dropped, are the clean run's.
    from wikiembed.snapshots import live_articles
    from wikiembed.store import Store

    for g in gens:
        own = pq.read_table(store / "gens" / g / "articles.parquet")
        assert set(own.column("gen").to_pylist()) == {g}
        assert own.num_rows == pq.ParquetFile(store / "gens" / g / "snapshot" / "source.parquet").metadata.num_rows
    live, clean = live_articles(Store(store, gens[2])), live_articles(Store(clean_store))
    assert (live.id_key.tolist(), live.content_key.tolist()) == (clean.id_key.tolist(), clean.content_key.tolist())

    vectors = StoreVectors(store)
    assert vectors.chunks == _table(clean_store).num_rows
    build_index(store, "float32")
    removed, edited = v1[7], v1[5]
    queries = vectors.embed_queries([removed["title"], edited["title"]])
    form = vectors.form("float32")
    exact = vectors.top(queries, 10, form, exact=True)
    approx = vectors.top(queries, 10, form)
    assert approx.method == "index" and exact.method == "exact"
    for ranking in (exact, approx):
        found = vectors.rows(ranking.positions)
        assert removed["id"] not in {row["id"] for row in found.values()}
        # the edited article ranks only through its live rows, those of the third day's own shard
        homes = {vectors.parts[int(p) >> 32].gen for p, row in found.items() if row["id"] == edited["id"]}
        assert homes <= {gens[2]}
    assert cli_main(["eval", "--store", str(store), "--sample", "20", "--no-record"]) == 0
    assert cli_main(["status", "--store", str(store), "--verify"]) == 0

    kept_file = next((store / "gens" / gens[0] / "data").glob("*.parquet"))
    good = kept_file.read_bytes()
    kept_file.write_bytes(good + b"damage")
    assert cli_main(["status", "--store", str(store), "--verify"]) == 1
    with pytest.raises(StoreError, match="keeps from earlier ones"):
        publish(store, f"dir:{tmp_path / 'out'}")
    kept_file.write_bytes(good)

    # Most articles edited: a full generation again; the generations only it kept are gone.
    v4 = [dict(r, text=r["text"] + " Rewritten.") for r in v3]
    _write_jsonl(tmp_path / "live.jsonl", v4)
    full = embed_dataset(source=str(tmp_path / "live.jsonl"), store=str(store), shard_rows=20)
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["base"] == [] and full["kept_chunks"] == 0 and full["shards_done"] == 3
    assert [p.name for p in (store / "gens").iterdir()] == [full["generation"]]


def test_a_version_past_the_layer_limit_is_full_and_counts_its_changes(prefect_api, tmp_path, monkeypatch):
    import wikiembed.snapshots as snapshots

    v1 = list(generate_articles(30))
    v2 = v1 + [dict(r, id=f"new-{i}", title=f"New {i}") for i, r in enumerate(generate_articles(1, seed=7))]
    v3 = [dict(r) for r in v2[1:]]
    v3[0]["text"] += "\n\nEdited on the third day."
    store = tmp_path / "store"
    for rows in (v1, v2):
        _write_jsonl(tmp_path / "live.jsonl", rows)
        embed_dataset(source=str(tmp_path / "live.jsonl"), store=str(store), shard_rows=20)
    assert json.loads((store / "manifest.json").read_text())["base"]
    monkeypatch.setattr(snapshots, "MAX_BASE_GENERATIONS", 1)
    _write_jsonl(tmp_path / "live.jsonl", v3)
    third = embed_dataset(source=str(tmp_path / "live.jsonl"), store=str(store), shard_rows=20)
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["base"] == [] and third["kept_chunks"] == 0
    assert third["changes"] == {"added": 0, "edited": 1, "removed": 1}  # against the published version, though it was a delta
    assert [p.name for p in (store / "gens").iterdir()] == [third["generation"]]


def test_a_new_version_indexes_only_its_own_data_files(prefect_api, versions, tmp_path):
    """The next version's run indexes its own new shard into a segment of its own and reuses the segment
    of the files it keeps (not one byte rewritten); search through them finds what the exact scan finds
    and never a row of an article the version dropped, even where those rows are the nearest."""
    from wikiembed.search import StoreVectors

    store = tmp_path / "store"
    first = embed_dataset(source=str(versions / "v1.jsonl"), store=str(store), shard_rows=20, output={"index": ["float32"]})
    assert [(i["parts_built"], i["parts_reused"]) for i in first["index"]] == [(2, 0)]
    day1 = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (store / "gens").rglob("index/*/*")}
    assert len(day1) == 2  # the two data files' segment: a graph and its sidecar
    (versions / "live.jsonl").write_bytes((versions / "v2.jsonl").read_bytes())
    daily = embed_dataset(source=str(versions / "live.jsonl"), store=str(store), shard_rows=20, output={"index": ["float32"]})
    [indexed] = daily["index"]
    assert (indexed["parts_built"], indexed["parts_reused"], indexed["rows"]) == (1, 2, daily["chunks"] + daily["kept_chunks"])
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) == s for p, s in day1.items())
    gen = daily["generation"]
    [segment] = (store / "gens" / gen / "index" / "embedding").glob("seg-*.json")
    assert [f["data"] for f in json.loads(segment.read_text())["files"]] == [f"gens/{gen}/data/00000.parquet"]
    assert len(list(segment.parent.iterdir())) == 2

    vectors = StoreVectors(store)
    form = vectors.form("float32")
    dropped = {fi: vectors.dropped_rows(fi) for fi, part in enumerate(vectors.parts) if part.drop is not None}
    assert sum(len(rows) for rows in dropped.values()) == sum(p.dropped_chunks for p in vectors.parts) > 0
    # As queries: every article's title, and the stored vectors of the dropped rows themselves (each nearest to itself).
    titles = vectors.embed_queries([json.loads(line)["title"] for line in (versions / "v1.jsonl").read_text().splitlines()])
    own = []
    for fi, rows in dropped.items():
        table = pq.read_table(vectors.files[fi], columns=["embedding"])
        own.append(np.asarray(table.column(0).to_pylist(), dtype=np.float32)[rows])
    queries = np.concatenate([titles, *own])
    exact = vectors.top(queries, 10, form, exact=True)
    approx = vectors.top(queries, 10, form)
    assert (approx.method, approx.note) == ("index", None)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.positions, exact.positions)])
    assert recall >= 0.95, recall
    positions = {int(p) for p in approx.positions.reshape(-1)}
    assert not any((fi << 32) | int(r) in positions for fi, rows in dropped.items() for r in rows)
    removed = json.loads((versions / "v1.jsonl").read_text().splitlines()[20])["id"]
    assert removed not in {row["id"] for row in vectors.rows(approx.positions).values()}
