"""`wikiembed finetune` on a store of real text (Python's reference topics, embedded by the real flow with the
bundled model): each topic's title is a query for its topic; 1 epoch on the CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.flows.conftest import ROOT
from wikiembed.flows.cli import main
from wikiembed.model import DEFAULT_MODEL, resolve_model_path

# Training reads each text's first 64 tokens (the saved model keeps its own limit): these tests check what a fine-tune
# writes and records, not how much it learns, and 64 tokens train several times faster than the topics' whole chunks.
SHORT = ("--max-seq-length", "64")


def title_pairs(source: Path, dest: Path, extra: list[dict] | None = None) -> Path:
    rows = [{"query": r["title"], "id": r["id"]} for r in map(json.loads, source.read_text().splitlines())]
    dest.write_text("".join(json.dumps(r) + "\n" for r in rows + (extra or [])), encoding="utf-8")
    return dest


def twins(source: Path, n: int) -> list[dict]:
    """The first n titles again as the uncased model reads them the same: lowercased, spaced out."""
    rows = list(map(json.loads, source.read_text().splitlines()))[:n]
    return [{"query": "  " + r["title"].lower().replace(" ", "  \u00a0"), "id": r["id"]} for r in rows]


@pytest.fixture(scope="module")
def tuned(compact_store, topics, tmp_path_factory):
    """(folder, --json payload, stderr) of one fine-tune of the compact store on its titles, one pair naming nothing and
    10 near-duplicates (titles lowercased and spaced out: the same token ids to the uncased model)."""
    base = tmp_path_factory.mktemp("finetune")
    pairs = title_pairs(topics, base / "pairs.jsonl", [{"query": "a topic nobody wrote", "id": "no-such-topic"}, *twins(topics, 10)])
    out, payload = base / "model", base / "ft.json"
    code = main(["finetune", "--store", str(compact_store), "--pairs", str(pairs), "--out", str(out), "--json", str(payload),
                 "--batch-size", "8", *SHORT])
    assert code == 0
    return out, json.loads(payload.read_text()), pairs


def test_finetune_writes_a_model_that_loads_and_differs_from_the_base(tuned):
    from sentence_transformers import SentenceTransformer

    out, result, _ = tuned
    text = ["How do I stop a loop before it ends?"]
    base = SentenceTransformer(str(resolve_model_path(DEFAULT_MODEL)), device="cpu").encode(text)
    new = SentenceTransformer(str(out), device="cpu").encode(text)
    assert new.shape == base.shape and not np.allclose(new, base, atol=1e-4)
    assert SentenceTransformer(str(out), device="cpu").max_seq_length == 256 and result["settings"]["max_seq_length"] == 64
    assert result["pairs"] == {"read": 45, "matched": 44, "unmatched": 1, "relevant_missing": 1, "near_duplicates": 10}
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
    seen = lambda texts: {" ".join(t.replace("\u00a0", " ").lower().split()) for t in texts}  # noqa: E731
    assert not seen(train) & seen(held)  # no query is judged on its own twin
    card = (out / "README.md").read_text()
    manifest = json.loads((compact_store / "manifest.json").read_text())
    for needle in (DEFAULT_MODEL, manifest["model"]["revision"], result["generation"], "27 trained on, 7 held out",
                   "10 merged into a query the model reads the same",
                   "1 epoch(s), batch size 8", "the first 64 tokens of each text read while training", "| fine-tuned |"):
        assert needle in card, needle
    assert card.startswith("---\n")  # the Hub's YAML header stays first
    assert json.loads((out / "finetune.json").read_text())["after"] == result["after"]
    assert [p.name for p in out.parent.glob(f".{out.name}*")] == []  # neither its lock nor a temporary folder stays


def test_queries_the_model_reads_as_one_are_merged_and_never_split(topics):
    """Each title also lowercased, spaced out with a no-break space, or in full-width letters: the same token ids to the
    uncased model (after NFKC), so each group is one query, wholly on one side of the split, whatever the file's order."""
    from wikiembed.finetune import merge_alike, model_reading
    from wikiembed.queries import JudgedQuery, split_holdout

    rows = list(map(json.loads, topics.read_text().splitlines()))
    queries = [JudgedQuery(text, frozenset({(r["id"], None)})) for r in rows
               for text in (r["title"], r["title"].lower().replace(" ", " \u00a0 "))]
    queries.append(JudgedQuery("ＬＩＴＥＲＡＬＳ", frozenset({("atom-literals", None)})))  # full-width: NFKC gives LITERALS
    queries.append(JudgedQuery("Literals", frozenset({("numbers", None)})))  # a second relevant item of the same query
    key = model_reading(DEFAULT_MODEL)
    merged, near_duplicates = merge_alike(queries, key)
    assert (len(merged), near_duplicates) == (34, 36)
    literals = next(q for q in merged if key(q.text) == key("literals"))
    assert literals.text == "Literals" and literals.relevant == {("atom-literals", None), ("numbers", None)}
    assert set(merge_alike(queries[::-1], key)[0]) == set(merged)
    for seed in range(5):
        train, held = split_holdout(merged, 0.2, seed)
        assert len(held) == 7 and not {key(q.text) for q in train} & {key(q.text) for q in held}


def test_the_same_finetune_again_returns_the_recorded_one_and_another_refuses_the_folder(tuned, compact_store, tmp_path, capsys):
    out, result, pairs = tuned
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = tmp_path / "again.json"
    assert main(["finetune", "--store", str(compact_store), "--pairs", str(pairs), "--out", str(out), "--json", str(again),
                 "--batch-size", "8", *SHORT]) == 0
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


def test_a_second_finetune_into_the_same_out_is_refused_at_once_and_leaves_nothing(compact_store, topics, tmp_path, cli_env,
                                                                                capsys):
    """Two `wikiembed finetune --out M` at once: the second is refused while the first works, naming it, and writes nothing."""
    pairs = title_pairs(topics, tmp_path / "pairs.jsonl")
    out = tmp_path / "model"
    args = ["finetune", "--store", str(compact_store), "--pairs", str(pairs), "--out", str(out), "--batch-size", "8", "--negatives", "0"]
    first = subprocess.Popen([sys.executable, "-m", "wikiembed.flows.cli", *args], env=cli_env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not list(tmp_path.glob(".model*")) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # until the first writes beside --out
        time.sleep(0.5)
        assert first.poll() is None, "the first fine-tune ended before the second started"
        started = time.monotonic()
        code = main(args)
        took = time.monotonic() - started
        mine = tmp_path / f".model.tmp-{os.getpid()}"
        assert first.poll() is None and not mine.exists() and not out.exists()
    finally:
        first.kill()
        first.wait()
    err = capsys.readouterr().err
    assert code == 2 and took < 30, (code, took, err[-2000:])
    assert f"--out {out} is in use by pid {first.pid} on" in err and "another fine-tune is writing it" in err
    assert err.count("error:") == 1


@pytest.fixture(scope="module")
def tuned_at_80_on_an_index(compact_store, topics, tmp_path_factory):
    """(folder, record) of one fine-tune at batch size 80 (above CACHED_ABOVE) with a hard negative per pair, of a copy
    of the compact store with an approximate index built, next to the temporary folder a fine-tune killed before its
    rename leaves."""
    from wikiembed.finetune import FinetuneSettings, finetune
    from wikiembed.index_build import build_index

    base = tmp_path_factory.mktemp("finetune-indexed")
    store = shutil.copytree(compact_store, base / "store", symlinks=True)
    build_index(store, "float32")
    (base / ".model.tmp-999999").mkdir()  # what a fine-tune killed before its rename leaves
    record = finetune(store, title_pairs(topics, base / "pairs.jsonl"), base / "model", FinetuneSettings(batch_size=80, max_seq_length=64))
    return base / "model", record


def test_batches_above_64_train_with_the_cached_loss(tuned_at_80_on_an_index):
    from sentence_transformers import SentenceTransformer

    out, record = tuned_at_80_on_an_index
    assert record.loss == "CachedMultipleNegativesRankingLoss" and record.examples == 27
    assert SentenceTransformer(str(out), device="cpu").encode(["x"]).shape == (1, 384)
    assert not list(out.parent.glob(".model.tmp-*"))


def test_hard_negatives_come_through_the_approximate_index_where_one_is_built(tuned_at_80_on_an_index):
    _, record = tuned_at_80_on_an_index
    assert record.negatives_from == "approximate index" and record.settings["negatives"] == 1 and record.examples == 27
