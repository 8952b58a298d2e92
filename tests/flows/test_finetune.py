"""`wikiembed finetune` on a store of real text (Python's reference topics, embedded by the real flow with the
bundled model): each topic's title is a query for its topic; 1 epoch on the CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from wikiembed.flows.cli import main
from wikiembed.model import DEFAULT_MODEL, resolve_model_path


def title_pairs(source: Path, dest: Path, extra: list[dict] | None = None) -> Path:
    rows = [{"query": r["title"], "id": r["id"]} for r in map(json.loads, source.read_text().splitlines())]
    dest.write_text("".join(json.dumps(r) + "\n" for r in rows + (extra or [])), encoding="utf-8")
    return dest


@pytest.fixture(scope="module")
def tuned(compact_store, topics, tmp_path_factory):
    """(folder, --json payload, stderr) of one fine-tune of the compact store on its titles, one pair naming nothing."""
    base = tmp_path_factory.mktemp("finetune")
    pairs = title_pairs(topics, base / "pairs.jsonl", [{"query": "a topic nobody wrote", "id": "no-such-topic"}])
    out, payload = base / "model", base / "ft.json"
    code = main(["finetune", "--store", str(compact_store), "--pairs", str(pairs), "--out", str(out), "--json", str(payload),
                 "--batch-size", "8"])
    assert code == 0
    return out, json.loads(payload.read_text()), pairs


def test_finetune_writes_a_model_that_loads_and_differs_from_the_base(tuned):
    from sentence_transformers import SentenceTransformer

    out, result, _ = tuned
    text = ["How do I stop a loop before it ends?"]
    base = SentenceTransformer(str(resolve_model_path(DEFAULT_MODEL)), device="cpu").encode(text)
    new = SentenceTransformer(str(out), device="cpu").encode(text)
    assert new.shape == base.shape and not np.allclose(new, base, atol=1e-4)
    assert result["pairs"] == {"read": 35, "matched": 34, "unmatched": 1, "relevant_missing": 1}
    assert (result["train"], result["holdout"]) == (27, 7) and result["examples"] == 27
    assert result["loss"] == "MultipleNegativesRankingLoss" and result["negatives_from"] == "exact scan"
    for block in ("before", "after"):
        for metric in ("recall_at_1", "recall_at_10", "mrr"):
            assert 0 <= result[block][metric] <= 1 and len(result[block][metric + "_ci95"]) == 2
    assert result["difference"]["mrr"] == pytest.approx(result["after"]["mrr"] - result["before"]["mrr"])


def test_held_out_queries_are_never_trained_on_and_the_card_says_what_was_done(tuned, compact_store):
    out, result, _ = tuned
    read = lambda name: {json.loads(line)["query"] for line in (out / name).read_text().splitlines()}  # noqa: E731
    train, held = read("train.jsonl"), read("heldout.jsonl")
    assert len(train) == 27 and len(held) == 7 and not train & held
    card = (out / "README.md").read_text()
    manifest = json.loads((compact_store / "manifest.json").read_text())
    for needle in (DEFAULT_MODEL, manifest["model"]["revision"], result["generation"], "27 trained on, 7 held out",
                   "1 epoch(s), batch size 8", "| fine-tuned |"):
        assert needle in card, needle
    assert card.startswith("---\n")  # the Hub's YAML header stays first
    assert json.loads((out / "finetune.json").read_text())["after"] == result["after"]


def test_the_same_finetune_again_returns_the_recorded_one_and_another_refuses_the_folder(tuned, compact_store, tmp_path, capsys):
    out, result, pairs = tuned
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = tmp_path / "again.json"
    assert main(["finetune", "--store", str(compact_store), "--pairs", str(pairs), "--out", str(out), "--json", str(again),
                 "--batch-size", "8"]) == 0
    assert json.loads(again.read_text()) == result and (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert main(["finetune", "--store", str(compact_store), "--pairs", str(pairs), "--out", str(out), "--epochs", "2"]) == 2
    assert "exists and holds something else" in capsys.readouterr().err


def _fake_revision(store: Path, dest: Path) -> Path:
    shutil.copytree(store, dest, symlinks=True)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["model"]["revision"] = "sha256:0000000000000000"
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


@pytest.mark.parametrize(
    "case, needle",
    [
        ("none match", "none of the 2 queries has a relevant article in store"),
        ("too few", "at least 20 are needed"),
        ("none held out", "holds out none"),
        ("other base", "are not the ones store"),
    ],
)
def test_bad_input_exits_2_with_one_message_and_writes_nothing(case, needle, compact_store, topics, tmp_path, capsys):
    store, args = compact_store, []
    pairs = title_pairs(topics, tmp_path / "pairs.jsonl")
    if case == "none match":
        pairs.write_text('{"query": "a", "id": "x"}\n{"query": "b", "id": "y"}\n')
    elif case == "too few":
        pairs.write_text("".join(pairs.read_text().splitlines(keepends=True)[:20]))
    elif case == "none held out":
        args = ["--holdout", "0.01"]
    else:
        store = _fake_revision(compact_store, tmp_path / "store")
    out = tmp_path / "model"
    assert main(["finetune", "--store", str(store), "--pairs", str(pairs), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("error:") == 1
    assert not out.exists() and not list(tmp_path.glob(".model*"))


def test_batches_above_64_train_with_the_cached_loss(compact_store, topics, tmp_path):
    from sentence_transformers import SentenceTransformer

    from wikiembed.finetune import FinetuneSettings, finetune

    pairs = title_pairs(topics, tmp_path / "pairs.jsonl")
    (tmp_path / ".model.tmp-999999").mkdir()  # what a fine-tune killed before its rename leaves
    record = finetune(compact_store, pairs, tmp_path / "model", FinetuneSettings(batch_size=80, negatives=0))
    assert record["loss"] == "CachedMultipleNegativesRankingLoss" and record["examples"] == 27
    assert SentenceTransformer(str(tmp_path / "model"), device="cpu").encode(["x"]).shape == (1, 384)
    assert not list(tmp_path.glob(".model.tmp-*"))


def test_hard_negatives_come_through_the_approximate_index_where_one_is_built(compact_store, topics, tmp_path):
    from wikiembed.finetune import FinetuneSettings, finetune
    from wikiembed.search import build_index

    store = shutil.copytree(compact_store, tmp_path / "store", symlinks=True)
    build_index(store, "float32")
    record = finetune(store, title_pairs(topics, tmp_path / "pairs.jsonl"), tmp_path / "model", FinetuneSettings(batch_size=8))
    assert record["negatives_from"] == "approximate index" and record["examples"] == 27
