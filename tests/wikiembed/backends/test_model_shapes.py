"""Every model shape the engine accepts makes sentence-transformers' own vectors; every shape it
cannot reproduce is refused by name.

Tiny random-weight models built offline (`tests/model_shapes.py`): every pooling mode, several
concatenated, a prompt left out of pooling, e5-style and bge-style prompts, a Dense head,
`truncate_dim`, no Normalize, and a Qwen3-shaped decoder (byte-level BPE, EOS appended, left
padding, last-token pooling, a query instruction). The reference is `encode_document` /
`encode_query` on the same folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tests.model_shapes import SHAPES, build
from wikiembed.backends.engine import TorchEngine
from wikiembed.chunking import Chunking, chunk_table
from wikiembed.errors import InputError
from wikiembed.model import load_tokenizer, model_info
from wikiembed.sample import generate_articles

TEXTS = [a["text"][:700] for a in generate_articles(24)] + ["a", "Short one.", "word " * 400, "Ünïcödé — 東京 😀 text"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shapes")


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


@pytest.mark.parametrize("name", list(SHAPES))
def test_documents_and_queries_are_what_sentence_transformers_makes(shapes: Path, name: str) -> None:
    from sentence_transformers import SentenceTransformer

    folder = str(build(name, shapes))
    info = model_info(folder)
    reference = SentenceTransformer(folder, device="cpu")
    with TorchEngine(folder, "cpu") as engine:
        assert engine.dim == reference.get_embedding_dimension() == info.dim
        documents = engine.embed(TEXTS, info.prompt(None, "document"))
        queries = engine.embed(TEXTS[:8], info.prompt(None, "query"))
    expected_documents = reference.encode_document(TEXTS, batch_size=8)
    expected_queries = reference.encode_query(TEXTS[:8], batch_size=8)
    assert documents.shape == expected_documents.shape
    assert _min_cosine(documents, expected_documents) >= 0.999
    assert _min_cosine(queries, expected_queries) >= 0.999
    np.testing.assert_allclose(documents, expected_documents, atol=1e-4)  # not only the direction: the values
    np.testing.assert_allclose(queries, expected_queries, atol=1e-4)


@pytest.mark.parametrize("name", ["e5-prompts", "instructor", "decoder", "matryoshka"])
def test_the_token_chunkers_ids_embed_as_prompt_plus_text(shapes: Path, name: str) -> None:
    """The local path embeds the chunker's ids: they hold the prompt, fit the limit with it, and
    give the same vectors as encode_document of the chunk's text."""
    from sentence_transformers import SentenceTransformer

    folder = str(build(name, shapes))
    info = model_info(folder)
    prompt = info.prompt(None, "document") or info.prompt(None, "query")  # the decoder's documents have none
    tokenizer = load_tokenizer(folder)
    rows = pa.Table.from_pylist([{k: a[k] for k in ("id", "url", "title", "text")} for a in generate_articles(12)])
    size = 128 if info.decoder else 48  # the decoder's tiny test vocabulary spends 58 tokens on its instruction
    chunks = chunk_table(rows, Chunking("tokens", size, 0), tokenizer, prompt=prompt)
    ids = chunks.column("input_ids").to_pylist()
    texts = chunks.column("text").to_pylist()
    assert ids == [tokenizer.encode(prompt + text).ids for text in texts]
    assert max(map(len, ids)) <= size and len(ids) > len(rows)  # articles were cut, within the limit
    flat = np.concatenate([np.asarray(x, dtype=np.int32) for x in ids])
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])])
    with TorchEngine(folder, "cpu") as engine:
        vectors = engine.embed_ids(flat, offsets, prompt)
    expected = SentenceTransformer(folder, device="cpu").encode(texts, prompt=prompt, batch_size=16)
    assert _min_cosine(vectors, expected) >= 0.999


def test_a_prompt_that_runs_into_the_text_is_tokenized_with_it(shapes: Path) -> None:
    """'Represent this' + 'The' is one word to BERT's pre-tokenizer: the ids are not the prompt's
    tokens followed by the text's, and the chunker gives the joined text's."""
    folder = str(build("e5-prompts", shapes))
    tokenizer = load_tokenizer(folder)
    rows = pa.Table.from_pylist([{"id": "1", "url": "", "title": "", "text": "Thermal power. " * 40}])
    chunks = chunk_table(rows, Chunking("tokens", 32, 0), tokenizer, prompt="Represent this")
    texts = chunks.column("text").to_pylist()
    assert chunks.column("input_ids").to_pylist() == [tokenizer.encode("Represent this" + t).ids for t in texts]
    assert tokenizer.encode("Represent thisThermal").ids != tokenizer.encode("Represent this").ids[:-1] + tokenizer.encode("Thermal").ids[1:]


def test_model_info_reads_the_whole_module_list(shapes: Path) -> None:
    dense = model_info(str(build("dense", shapes)))
    assert (dense.pooling, dense.hidden_size, dense.dim, [d.describe() for d in dense.dense]) == ("mean", 64, 32, ["64->32 Tanh"])
    both = model_info(str(build("cls+mean", shapes)))
    assert (both.pooling_modes, both.dim) == (("cls", "mean"), 128)
    cut = model_info(str(build("matryoshka", shapes)))
    assert (cut.dim, cut.truncate_dim) == (48, 48)
    e5 = model_info(str(build("e5-prompts", shapes)))
    assert (e5.prompt(None, "document"), e5.prompt(None, "query"), e5.prompt("query", "document"), e5.prompt("", "query")) == (
        "passage: ", "query: ", "query: ", ""
    )
    with pytest.raises(InputError, match=r"--prompt-name 'nope'.*its prompts: 'document', 'query'"):
        e5.prompt("nope", "document")
    decoder = model_info(str(build("decoder", shapes)))
    assert (decoder.pooling, decoder.padding_side, decoder.prompt(None, "document")) == ("lasttoken", "left", "")


def _modules(folder: Path) -> list[dict]:
    return json.loads((folder / "modules.json").read_text())


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda f: (f / "modules.json").write_text(json.dumps(_modules(f)[:2] + [
            {"idx": 2, "name": "2", "path": "2_LayerNorm", "type": "sentence_transformers.models.LayerNorm"}] + _modules(f)[2:])), "LayerNorm"),
        (lambda f: (f / "modules.json").write_text(json.dumps(_modules(f)[:1])), "no Pooling module"),
        (lambda f: (f / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 64, "pooling_mode": "attention"})), "'attention'"),
        (lambda f: (f / "sentence_bert_config.json").write_text(json.dumps({"transformer_task": "fill-mask"})), "transformer_task='fill-mask'"),
        (lambda f: (f / "config.json").write_text(json.dumps({**json.loads((f / "config.json").read_text()), "auto_map": {"AutoModel": "m.M"}})), "--trust-remote-code"),
    ],
    ids=["layer-norm-module", "no-pooling", "unknown-pooling", "other-task", "remote-code"],
)
def test_what_cannot_be_reproduced_is_refused_by_name(shapes: Path, tmp_path: Path, change, named: str) -> None:
    folder = tmp_path / "model"
    shutil.copytree(build("mean", shapes), folder)
    change(folder)
    with pytest.raises(InputError, match=named):
        model_info(str(folder)).check_supported()
    with pytest.raises(InputError, match=named):
        TorchEngine(str(folder), "cpu")


def test_remote_code_runs_only_when_trusted(shapes: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(build("mean", shapes), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoConfig": "configuration_bert.BertConfig"}}))
    assert model_info(str(folder)).refusals(trust_remote_code=True) == []
    # The deployed Modal shard classes never run a model's code: refused on the flow's machine, before any call.
    from wikiembed.executors.modal_containers import ModalContainers

    with pytest.raises(InputError, match="deployed Modal shard classes load models without running their code"):
        ModalContainers.check_model(model_info(str(folder)), trust_remote_code=True)


def test_an_unknown_pooling_mode_is_the_only_part_refused(shapes: Path, tmp_path: Path) -> None:
    """The modules after a refused Pooling (Normalize) are not refused for it: they are fine after a pooling we know."""
    folder = tmp_path / "model"
    shutil.copytree(build("mean", shapes), folder)
    modules = _modules(folder)
    if not any(m["type"].endswith("Normalize") for m in modules):
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (folder / "modules.json").write_text(json.dumps(modules))
    assert model_info(str(folder)).refusals() == []
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 64, "pooling_mode": "attention"}))
    refusals = model_info(str(folder)).refusals()
    assert len(refusals) == 1 and "'attention'" in refusals[0] and "Normalize" not in refusals[0], refusals


def test_a_new_pooling_mode_is_its_name_in_the_model_reader_and_its_function_in_the_head(
    shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What docs/DEVELOPMENT.md says a pooling mode takes, done here: its name where `wikiembed/model.py`
    accepts Pooling configs (`POOLING_MODES`) and its function in `wikiembed/backends/pooling.py`
    (`@pooling_mode`); a model whose Pooling config names it then embeds with it, nothing else changed."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from wikiembed import model
    from wikiembed.backends import pooling

    folder = tmp_path / "min-model"
    shutil.copytree(build("mean", shapes), folder)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 64, "pooling_mode": "min"}))
    assert "'min'" in model_info(str(folder)).refusals()[0]  # not known yet

    monkeypatch.setattr(model, "POOLING_MODES", (*model.POOLING_MODES, "min"))
    monkeypatch.setitem(pooling.POOLING, "min", None)  # the registration below is undone after the test

    @pooling.pooling_mode("min")
    def _min(torch: Any, hidden: Any, real: Any, seen: Any) -> Any:
        if seen is None:
            return hidden.min(dim=1).values
        return hidden.masked_fill(seen.unsqueeze(-1) == 0, float("inf")).min(dim=1).values

    info = model_info(str(folder))
    assert info.refusals() == [] and info.pooling == "min" and info.dim == 64
    texts = ["a", "Short one.", "Ünïcödé — 東京 text", *[t[:200] for t in TEXTS[:6]]]
    with TorchEngine(str(folder), "cpu") as engine:
        vectors = engine.embed(texts, info.prompt(None, "document"))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        hidden = AutoModel.from_pretrained(str(folder)).eval()(**batch).last_hidden_state
        expected = hidden.masked_fill(batch["attention_mask"].unsqueeze(-1) == 0, float("inf")).min(dim=1).values
        expected = torch.nn.functional.normalize(expected, dim=-1).numpy()
    np.testing.assert_allclose(vectors, expected, atol=1e-4)
