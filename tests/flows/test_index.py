"""The approximate index on real text (Python's reference topics, the shared compact store): built
from the stored forms, used by search and eval, ignored once the data changes, optional to install."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from wikiembed.evaluate import sample_articles
from wikiembed.flows.cli import main
from wikiembed.search import StoreVectors
from wikiembed.records import Marker
from wikiembed.store import Store, sha256_file

# One form of each index kind: f32, f16, i8 and b1 (binary at 128 dimensions: 16 bytes a vector).
FORMS = ["float32", "float16@128", "int8", "binary@128"]


@pytest.fixture()
def store(compact_store, tmp_path):
    """A private copy of the shared store: these tests write indexes into it and rewrite its data."""
    copy = tmp_path / "store"
    shutil.copytree(compact_store, copy, symlinks=True)
    return copy


def _index(store, form: str, out) -> dict:
    assert main(["index", "--store", str(store), "--form", form, "--json", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("form", FORMS)
def test_index_finds_what_the_exact_scan_finds(store, form, tmp_path, monkeypatch):
    import wikiembed.search as search_mod

    monkeypatch.setattr(search_mod, "SCAN_ROWS", 7)  # the build streams many batches from each of the three files
    built = _index(store, form, tmp_path / "index.json")
    vectors = StoreVectors(store)
    chunks = sum(pq.ParquetFile(f).metadata.num_rows for f in vectors.files)
    assert built["rows"] == chunks and built["form"] == form
    assert built["metric"] == ("hamming" if form.startswith("binary") else "ip")
    # The three data files share one segment (a graph and its sidecar) in the generation's index folder.
    gen = vectors.store.gen
    assert [f["data"] for f in built["files"]] == [f"gens/{gen}/data/{k:05d}.parquet" for k in range(3)]
    assert (built["parts"], built["parts_built"], built["parts_reused"], built["rows_built"]) == (3, 3, 0, chunks)
    assert (built["segments_built"], built["segments_reused"], built["segments_merged"]) == (1, 0, 0)
    [segment] = built["segments"]
    assert (segment["files"], segment["rows"], segment["built"]) == (3, chunks, True)
    assert {f["index"] for f in built["files"]} == {segment["index"]}
    column = vectors.form(form).column
    assert built["path"] == str(store.resolve() / "gens" / gen / "index" / column)
    name = os.path.basename(segment["index"]).removesuffix(".usearch")
    assert name.startswith("seg-") and sorted(os.listdir(built["path"])) == [f"{name}.json", f"{name}.usearch"]
    assert os.path.getsize(segment["index"]) == segment["bytes"] == built["bytes"] > 0

    # Every article's title as a query, plus questions in other words.
    queries = [t for _, t in sample_articles(vectors, 100, 0)] + ["leave the innermost loop", "how are integers written"]
    q = vectors.embed_queries(queries)
    f = vectors.form(form)
    exact = vectors.top(q, 10, f, exact=True)
    approx = vectors.top(q, 10, f)
    assert (exact.method, approx.method, approx.note) == ("exact", "index", None)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.positions, exact.positions)])
    same_first = np.mean(approx.positions[:, 0] == exact.positions[:, 0])
    assert recall >= 0.9 and same_first >= 0.9, (recall, same_first)
    # Candidates are rescored from the stored column: where both found a row, the scores agree.
    for a_pos, a_sc, e_pos, e_sc in zip(approx.positions, approx.scores, exact.positions, exact.scores):
        e = dict(zip(e_pos.tolist(), e_sc.tolist()))
        assert all(abs(s - e[p]) < 1e-5 for p, s in zip(a_pos.tolist(), a_sc.tolist()) if p in e)


def test_search_and_eval_use_the_index_and_exact_forces_the_scan(store, tmp_path, capsys):
    _index(store, "float32", tmp_path / "index.json")
    hits, scanned = tmp_path / "hits.json", tmp_path / "scanned.json"
    assert main(["search", "--store", str(store), "leave the innermost loop", "-k", "3", "--json", str(hits)]) == 0
    assert "approximate index" in capsys.readouterr().out
    assert main(["search", "--store", str(store), "leave the innermost loop", "-k", "3", "--exact", "--json", str(scanned)]) == 0
    assert "exact scan" in capsys.readouterr().out
    via_index, via_scan = json.loads(hits.read_text()), json.loads(scanned.read_text())
    assert (via_index["method"], via_scan["method"]) == ("index", "exact")
    # The same hit; its score computed in another matrix product (of the candidates, not of a scan batch).
    first, scanned_first = dict(via_index["hits"][0]), dict(via_scan["hits"][0])
    assert first.pop("score") == pytest.approx(scanned_first.pop("score"), abs=1e-6)
    assert first == scanned_first and first["id"] == "break"
    assert set(via_index["hits"][0]) == set(via_scan["hits"][0])

    ev = tmp_path / "eval.json"
    assert main(["eval", "--store", str(store), "--forms", "float32,int8", "--no-record", "--json", str(ev)]) == 0
    result = json.loads(ev.read_text())
    assert result["method"] == "index"
    assert {f["form"]: f["method"] for f in result["forms"]} == {"float32": "index", "int8": "exact"}  # int8 has no index
    assert main(["eval", "--store", str(store), "--forms", "float32", "--json", str(ev)]) == 0
    assert "| float32 (approximate index) | 1536 |" in (store / "README.md").read_text()  # the card says how it was searched
    assert main(["eval", "--store", str(store), "--no-record", "--exact", "--json", str(ev)]) == 0
    scanned_eval = json.loads(ev.read_text())
    assert scanned_eval["method"] == "exact"
    assert abs(scanned_eval["recall_at_10"] - result["recall_at_10"]) <= 0.1


def test_an_index_of_other_data_is_ignored_with_a_warning(store, tmp_path, capsys, monkeypatch):
    from pathlib import Path

    from wikiembed import index_segments as segs

    monkeypatch.setattr(segs, "SEGMENT_ROWS", 1)  # a segment for each data file: only the rewritten file's is stale
    first = _index(store, "float32", tmp_path / "index.json")
    # Shard 1 rewritten and marked done again (as a rerun that embeds differently would): its rows reversed.
    s = Store(store)
    path = s.data_path(1)
    table = pq.read_table(path)
    pq.write_table(table.take(list(range(table.num_rows))[::-1]), path, compression="zstd")
    st = path.stat()
    marker = json.loads(s.done_path(1).read_text())
    s.mark_done(1, Marker.model_validate({**marker, "sha256": sha256_file(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
                                          "inode": st.st_ino}))

    out = tmp_path / "hits.json"
    assert main(["search", "--store", str(store), "leave the innermost loop", "-k", "3", "--json", str(out)]) == 0
    err = capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["method"] == "exact" and result["hits"][0]["id"] == "break"
    assert "built from other data than the store holds now (shards 1 rewritten)" in err
    assert f"wikiembed index --store {store.resolve()} --form float32" in err and result["index_note"] in err
    # Rebuilt, it is used again: only the rewritten file's segment is built anew.
    untouched = Path(first["files"][0]["index"])
    before = untouched.stat()
    rebuilt = _index(store, "float32", tmp_path / "index.json")
    assert (rebuilt["parts_built"], rebuilt["parts_reused"]) == (1, 2)
    assert [f["built"] for f in rebuilt["files"]] == [False, True, False]
    assert (untouched.stat().st_ino, untouched.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert main(["search", "--store", str(store), "leave the innermost loop", "-k", "3", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["method"] == "index" and "warning" not in capsys.readouterr().err


def test_a_data_file_without_an_index_scans_the_generation_and_says_which(store, tmp_path, capsys, monkeypatch):
    from pathlib import Path

    from wikiembed import index_segments as segs

    monkeypatch.setattr(segs, "SEGMENT_ROWS", 1)  # a segment for each data file
    built = _index(store, "float32", tmp_path / "index.json")
    Path(built["files"][2]["index"]).with_suffix(".json").unlink()  # a graph without its sidecar is never used
    out = tmp_path / "hits.json"
    assert main(["search", "--store", str(store), "leave the innermost loop", "-k", "3", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["method"] == "exact" and result["hits"][0]["id"] == "break"
    assert "the index of float32 covers 2 of 3 data files (shards 2 not indexed)" in result["index_note"]
    assert f"wikiembed index --store {store.resolve()} --form float32" in capsys.readouterr().err
    rebuilt = _index(store, "float32", tmp_path / "index.json")
    assert [f["built"] for f in rebuilt["files"]] == [False, False, True]
    assert main(["search", "--store", str(store), "leave the innermost loop", "-k", "3", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["method"] == "index"


def test_an_index_of_the_older_layout_is_not_read_and_a_rebuild_removes_it(store, tmp_path, capsys):
    """The layout before one graph per data file: `index/<column>.usearch` over a whole generation."""
    gen_dir = Store(store).dir
    (gen_dir / "index").mkdir()
    (gen_dir / "index" / "embedding.usearch").write_bytes(b"an older graph")
    (gen_dir / "index" / "embedding.json").write_text(json.dumps({"form": "float32", "rows": 3, "files": [{"shard": 0, "sha256": "x"}]}))
    out = tmp_path / "hits.json"
    assert main(["search", "--store", str(store), "leave the innermost loop", "-k", "3", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["method"] == "exact" and result["hits"][0]["id"] == "break"
    assert "has an older layout (one graph for the whole generation) that is no longer read" in result["index_note"]
    assert f"wikiembed index --store {store.resolve()} --form float32" in capsys.readouterr().err
    assert main(["index", "--store", str(store), "--form", "float32"]) == 0
    assert "removed " in capsys.readouterr().out
    assert sorted(p.name for p in (gen_dir / "index").iterdir()) == ["embedding"]
    assert main(["search", "--store", str(store), "leave the innermost loop", "-k", "3", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["method"] == "index"


def test_without_the_extra_index_fails_clearly_and_search_still_scans(store, tmp_path, capsys, monkeypatch):
    _index(store, "float32", tmp_path / "index.json")
    monkeypatch.setitem(sys.modules, "usearch", None)  # what `import usearch` does where it is not installed
    monkeypatch.setitem(sys.modules, "usearch.index", None)
    assert main(["index", "--store", str(store), "--form", "int8"]) == 2
    err = capsys.readouterr().err
    assert "usearch library, which is not installed; pip install 'wikiembed[index]'" in err and "Traceback" not in err
    out = tmp_path / "hits.json"
    assert main(["search", "--store", str(store), "leave the innermost loop", "-k", "3", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["method"] == "exact" and result["hits"][0]["id"] == "break"
    assert "has an index of float32, but the usearch library is not installed here" in capsys.readouterr().err


def test_index_of_a_form_the_store_lacks_names_the_forms_it_has(store, capsys):
    assert main(["index", "--store", str(store), "--form", "int4"]) == 2
    assert "this store holds float32, float16, int8, binary, float32@128" in capsys.readouterr().err


def test_a_run_builds_the_indexes_it_is_asked_for(store, topics, prefect_api, tmp_path, capsys):
    from wikiembed.flows.embed_dataset import embed_dataset

    output = {"dimensions": [384, 128], "precision": ["float32", "float16", "int8", "binary"]}
    # Every shard is done already: the run only finishes, and builds the indexes on the way.
    summary = embed_dataset(source=str(topics), store=str(store), shard_rows=12, output={**output, "index": ["float32", "binary@128"]})
    assert [(i["form"], i["rows"], i["parts_built"], i["parts_reused"]) for i in summary["index"]] == [
        ("float32", summary["chunks"], 3, 0), ("binary@128", summary["chunks"], 3, 0)]
    out = tmp_path / "hits.json"
    assert main(["search", "--store", str(store), "leave the innermost loop", "--form", "binary@128", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["method"] == "index"
    # A form the store lacks is refused before anything runs, naming the flag.
    assert main(["run", "--source", str(topics), "--store", str(store), "--shard-rows", "12", "--dimensions", "384,128",
                 "--precision", "float32,float16,int8,binary", "--index", "int8@64"]) == 2
    assert "--index 'int8@64': this store holds float32, float16, int8, binary, float32@128" in capsys.readouterr().err
