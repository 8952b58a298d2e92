"""Whole runs with models of other shapes: the stored vectors are `encode_document`'s, search
scores are `encode_query(q) . vector`, a change of prompt re-embeds, a model the engine cannot
reproduce is refused before anything is written, and the TEI path sends the prompt.

Tiny random-weight models (`tests/model_shapes.py`), the CLI's `main` (in the test process: a
model folder changed between two runs must not be served from a cache), the real Prefect API; the
TEI stand-in where a server is needed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.flows.conftest import cli_here
from tests.model_shapes import build
from tests.standins.tei_server import embed_texts, start_server
from wikiembed.errors import BackendError
from wikiembed.store import Store


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shapes")


def _stored(store: Path) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(Store(store).dir / "data").sort_by([("id", "ascending"), ("chunk_index", "ascending")])
    return table.column("text").to_pylist(), np.array(table.column("embedding").to_pylist(), dtype=np.float32)


@pytest.mark.parametrize("name", ["e5-prompts", "decoder", "dense"])
def test_a_run_stores_encode_document_and_search_scores_with_encode_query(prefect_api, capsys, shapes, tmp_path, name) -> None:
    from sentence_transformers import SentenceTransformer

    folder = build(name, shapes)
    store = tmp_path / "store"
    done = cli_here(capsys, "run", "--source", "sample:16", "--store", str(store), "--model", str(folder), "--shard-rows", "8")
    assert done.returncode == 0, done.stderr[-2000:]
    texts, vectors = _stored(store)
    reference = SentenceTransformer(str(folder), device="cpu")
    expected = reference.encode_document(texts, batch_size=16)
    cosine = (vectors * expected).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(expected, axis=1)
    assert len(texts) > 16 and cosine.min() >= 0.999

    query = "the history of the river and its city"
    found = cli_here(capsys, "search", "--store", str(store), query, "-k", "3", "--exact", "--json", str(tmp_path / "hits.json"))
    assert found.returncode == 0, found.stderr[-2000:]
    hits = json.loads((tmp_path / "hits.json").read_text())["hits"]
    q = reference.encode_query([query])[0]
    by_chunk = {(t): v for t, v in zip(texts, vectors)}
    for hit in hits:
        assert abs(hit["score"] - float(q @ by_chunk[hit["text"]])) <= 1e-3
    manifest = json.loads((Store(store).dir / "manifest.json").read_text())
    assert manifest["model"]["query_prompt"] == reference.prompts.get("query", "")
    card = (store / "README.md").read_text()
    assert "query prompt" in card.lower()


def test_a_changed_prompt_reembeds_and_an_unknown_one_is_refused(prefect_api, capsys, shapes, tmp_path) -> None:
    folder = build("e5-prompts", shapes)
    store = tmp_path / "store"
    base = ["run", "--source", "sample:12", "--store", str(store), "--model", str(folder), "--shard-rows", "6"]
    first = cli_here(capsys, *base, "--summary-json", str(tmp_path / "first.json"))
    assert first.returncode == 0, first.stderr[-2000:]
    again = cli_here(capsys, *base, "--prompt-name", "", "--summary-json", str(tmp_path / "second.json"))
    assert again.returncode == 0, again.stderr[-2000:]
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("first.json", "second.json"))
    assert two["embedded_chunks"] == one["embedded_chunks"] > 0 and two["reused_chunks"] == 0
    texts, vectors = _stored(store)
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(str(folder), device="cpu").encode(texts, prompt="")
    assert np.allclose(vectors, expected, atol=1e-4)  # no prompt now
    wrong = cli_here(capsys, *base, "--prompt-name", "summary")
    assert wrong.returncode == 2 and "--prompt-name 'summary'" in wrong.stderr and "'document', 'query'" in wrong.stderr


def test_a_model_with_a_module_the_engine_cannot_run_is_refused_before_anything_is_written(prefect_api, capsys, shapes, tmp_path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(build("mean", shapes), folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_WordWeights", "type": "sentence_transformers.models.WordWeights"})
    (folder / "modules.json").write_text(json.dumps(modules))
    store = tmp_path / "store"
    refused = cli_here(capsys, "run", "--source", "sample:8", "--store", str(store), "--model", str(folder))
    assert refused.returncode == 2
    assert "WordWeights" in refused.stderr and "--backend tei" in refused.stderr
    assert not store.exists() or not any(store.iterdir())


def test_tei_gets_the_document_prompt_and_a_server_pooling_otherwise_is_refused(prefect_api, shapes, tmp_path) -> None:
    from wikiembed.flows.embed_dataset import embed_dataset

    folder = str(build("e5-prompts", shapes))
    url, server = start_server(model_id=folder, dim=64, max_client_batch_size=16)
    try:
        summary = embed_dataset(source="sample:10", store=str(tmp_path / "tei"), shard_rows=5, model=folder, backend="tei",
                                compute={"tei_url": [url], "shard_workers": 1})  # fmt: skip
        assert summary["shards_done"] == 2
        texts, vectors = _stored(tmp_path / "tei")
        sent = [t for t in server.stats.inputs if t != "wikiembed probe"]  # the client's dimension probe at connect
        assert len(sent) == len(texts) and all(t.startswith("passage: ") for t in sent)
        assert np.array_equal(vectors, embed_texts(["passage: " + t for t in texts], dim=64))
    finally:
        server.stop()
    url, server = start_server(model_id=folder, dim=64, pooling="cls")
    try:
        from wikiembed.backends.tei import TEIBackend

        with pytest.raises(BackendError, match=r"pools with 'cls' but model .* pools with 'mean'.*--pooling mean"):
            TEIBackend([url], model_id=folder)
    finally:
        server.stop()


def test_a_changed_pooling_reembeds_every_chunk(prefect_api, capsys, shapes, tmp_path) -> None:
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "model"
    shutil.copytree(build("mean", shapes), folder)
    store = tmp_path / "store"
    base = ["run", "--source", "sample:12", "--store", str(store), "--model", str(folder), "--shard-rows", "6"]
    first = cli_here(capsys, *base, "--summary-json", str(tmp_path / "first.json"))
    assert first.returncode == 0, first.stderr[-2000:]
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 64, "pooling_mode": "max"}))
    again = cli_here(capsys, *base, "--summary-json", str(tmp_path / "second.json"))
    assert again.returncode == 0, again.stderr[-2000:]
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("first.json", "second.json"))
    assert two["embedded_chunks"] == one["embedded_chunks"] > 0 and two["reused_chunks"] == 0
    texts, vectors = _stored(store)
    assert np.allclose(vectors, SentenceTransformer(str(folder), device="cpu").encode_document(texts), atol=1e-4)
    assert json.loads((Store(store).dir / "manifest.json").read_text())["vectors"]["pooling"] == "max"


def test_a_store_of_a_model_with_its_own_code_is_searched_and_evaluated_when_trusted(prefect_api, capsys, shapes, tmp_path) -> None:
    """A model whose folder ships its code (`auto_map`) embeds with --trust-remote-code; search and eval of its
    store need the same consent to embed their queries, and are refused by name without it."""
    folder = tmp_path / "model"
    shutil.copytree(build("mean", shapes), folder)
    (folder / "modeling_tiny.py").write_text("from transformers import BertModel\n\n\nclass TinyModel(BertModel):\n    pass\n")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling_tiny.TinyModel"}}))
    store = tmp_path / "store"
    done = cli_here(capsys, "run", "--source", "sample:8", "--store", str(store), "--model", str(folder), "--trust-remote-code")
    assert done.returncode == 0, done.stderr[-2000:]

    query = ["search", "--store", str(store), "the history of the river", "-k", "2", "--exact"]
    refused = cli_here(capsys, *query)
    assert refused.returncode == 2 and "--trust-remote-code" in refused.stderr, refused.stderr[-2000:]
    found = cli_here(capsys, *query, "--trust-remote-code", "--json", str(tmp_path / "hits.json"))
    assert found.returncode == 0, found.stderr[-2000:]
    assert len(json.loads((tmp_path / "hits.json").read_text())["hits"]) == 2

    check = ["eval", "--store", str(store), "--sample", "4", "--no-record"]
    refused = cli_here(capsys, *check)
    assert refused.returncode == 2 and "--trust-remote-code" in refused.stderr, refused.stderr[-2000:]
    checked = cli_here(capsys, *check, "--trust-remote-code", "--json", str(tmp_path / "eval.json"))
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert json.loads((tmp_path / "eval.json").read_text())["n"] == 4
