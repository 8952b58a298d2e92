"""The `improve-model` flow on real text (Python's reference topics, 9 shards) with the bundled model, 1 epoch on
the CPU: re-embedding into a new store, keeping the old one published when the new model is not better
(trained on shuffled pairs), resuming after a SIGKILL (the compact store's loop, 3 shards, run again into another
new store: its fine-tune is found done, as a rerun finds it, and the kill comes while it re-embeds), and refusing
too few held-out queries before the fine-tune. The 34 topics hold out 7 queries, so these runs lower `min_holdout`
(default 20) to 5. Publishing a better model (2 epochs) is test_serve.py's loop (feedback → improve → the better store
published and served); the published store both start from is the `published_store` fixture (tests/flows/conftest.py)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.flows.conftest import ROOT
from tests.flows.test_finetune import title_pairs
from wikiembed.flows.improve_model import improve_model


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def announced(state, store: Path) -> tuple[object, list[object]]:  # noqa: ANN001
    """(the flow run, the wikiembed.improve.* events about `store`) of an improve-model run, as the UI and automations see them."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        deadline = time.monotonic() + 30
        while True:  # the server writes events a moment after it takes them
            events = client.read_events(EventFilter(event=EventNameFilter(prefix=["wikiembed.improve."]),
                                                    resource=EventResourceFilter(id=[f"wikiembed.store.{store}"])), limit=50).events
            if events or time.monotonic() > deadline:
                return run, events
            time.sleep(0.5)


def test_a_worse_model_is_not_published(published_store, topics, tmp_path, caplog):
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        caplog.set_level(logging.INFO, logger=name)  # the test session logs only warnings
    store, published = published_store
    before = _files(published)
    pairs = title_pairs(topics, tmp_path / "pairs.jsonl")
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    ids = [r["id"] for r in rows]
    random.Random(0).shuffle(ids)  # every title now points at some other topic
    pairs.write_text("".join(json.dumps({"query": r["query"], "id": i}) + "\n" for r, i in zip(rows, ids)))
    out, new = tmp_path / "model", tmp_path / "new-store"
    state = improve_model(str(store), str(pairs), str(out), str(new), upload_to=f"dir:{published}",
                          finetune={"batch_size": 8, "learning_rate": 1e-4, "negatives": 0, "max_seq_length": 64}, min_holdout=5,
                          return_state=True)
    result = state.result()
    assert result["publish"] is False and result["published"] is None
    # The run list and automations tell a kept store from a published one: name, state message, tags, event.
    run, events = announced(state, store)
    assert run.name == f"improve {store} on {pairs} into {new}"
    assert run.state.is_completed() and run.state.message == f"keep: {result['reason']}"
    assert {"decision:keep", f"model:{result['finetune']['base_model']}"} <= set(run.tags), run.tags
    assert [e.event for e in events] == ["wikiembed.improve.kept"]
    assert events[0].payload["difference"] == pytest.approx(result["difference"]["mrr"])
    assert {r.id for r in events[0].related} >= {f"wikiembed.store.{new}", f"prefect.flow-run.{run.id}"}
    # The fine-tune's log: one line a person reads per logging step, no raw trainer dicts, no bytecode; and a progress bar.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType, LogFilter,
                                                LogFilterFlowRunId)
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # log records reach the API in batches
    with get_client(sync_client=True) as client:
        logs = [log.message for log in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))]
        bars = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
                                                                    type=ArtifactFilterType(any_=["progress"])))
    steps = [m for m in logs if m.startswith("fine-tune: epoch ")]
    assert steps and all(", step " in m and " of " in m and ", loss " in m for m in steps), logs
    assert any(m.startswith("fine-tune: trained ") for m in logs), logs
    assert not [m for m in logs if "LOAD_GLOBAL" in m or "RESUME" in m or "{'loss'" in m], logs
    assert [b.data for b in bars if "fine-tune" in (b.description or "")] == [100.0]
    assert "the old store stays published" in result["reason"]
    assert _files(published) == before  # the published folder is untouched
    # Re-embedded with the new model: every chunk embedded, none reused from the old model's vectors.
    assert result["reembed"]["embedded_chunks"] == result["reembed"]["chunks"] > 0 and result["reembed"]["reused_chunks"] == 0
    assert json.loads((new / "manifest.json").read_text())["model"]["model_id"] == str(out.resolve())
    assert result["new"]["model"] == str(out.resolve()) and result["old"]["model"] == result["finetune"]["base_model"]
    # Both stores were scored on the held-out queries only (the pairs file's are shuffled, these are as written).
    held = {json.loads(line)["query"] for line in (out / "heldout.jsonl").read_text().splitlines()}
    assert result["old"]["n"] == result["new"]["n"] == len(held) == 7
    diff = result["difference"]
    assert diff["mrr"] == pytest.approx(result["new"]["mrr"] - result["old"]["mrr"])
    # The UI shows the decision, the figures and both models.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from wikiembed.flows.run_reports import artifact_key
    from wikiembed.store import Store

    with get_client(sync_client=True) as client:
        key = artifact_key("improve", Store(store))
        report = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))[0].data
    assert "# improve-model: keep" in report and result["reason"] in report and "| new − old |" in report
    assert result["finetune"]["base_revision"] in report and str(out.resolve()) in report


def _markers(store: Path) -> dict[str, int]:
    """Finished shards' markers by name (a marker being written has a temporary dot-name until its rename)."""
    done = store / "_done"
    return {p.name: p.stat().st_mtime_ns for p in done.glob("[0-9]*.json")} if done.exists() else {}


IMPROVE_OPTIONS = ["--batch-size", "8", "--negatives", "0", "--max-seq-length", "64", "--metric", "recall_at_10", "--margin", "0.02",
                   "--min-holdout", "5"]


@pytest.fixture(scope="module")
def improved(compact_store, topics, tmp_path_factory):
    """`wikiembed improve` of the compact store (3 shards) on its titles, 1 epoch, by the CLI's `main` in this process:
    (pairs, model folder, new store, exit code, --json payload, stdout, stderr). The killed loop below is the same
    loop into another new store: it finds this fine-tune done, as a rerun of the loop does."""
    from wikiembed.flows.cli import main

    base = tmp_path_factory.mktemp("improve-cli")
    pairs = title_pairs(topics, base / "pairs.jsonl")
    out, new, payload = base / "model", base / "new-store", base / "improve.json"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["improve", "--store", str(compact_store), "--pairs", str(pairs), "--out", str(out), "--new-store", str(new),
                     *IMPROVE_OPTIONS, "--json", str(payload)])
    return pairs, out, new, code, payload, stdout.getvalue(), stderr.getvalue()


def test_a_killed_loop_resumes_where_it_stopped(improved, compact_store, tmp_path, cli_env):
    pairs, out, _, code, *_ = improved
    assert code == 0
    store, new = compact_store, tmp_path / "new-store"
    script = ("import sys; from wikiembed.flows.improve_model import improve_model; "
              "improve_model(*sys.argv[1:5], metric='recall_at_10', margin=0.02, finetune={'batch_size': 8, 'negatives': 0, 'max_seq_length': 64}, "
              "min_holdout=5)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(store), str(pairs), str(out), str(new)], env=cli_env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 900
        while not (1 <= len(_markers(new)) < 3) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the loop ended before it could be killed mid re-embed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    kept = _markers(new)
    weights = (out / "model.safetensors").stat().st_mtime_ns
    assert 1 <= len(kept) < 3
    result = improve_model(str(store), str(pairs), str(out), str(new), metric="recall_at_10", margin=0.02,
                           finetune={"batch_size": 8, "negatives": 0, "max_seq_length": 64}, min_holdout=5)
    assert (out / "model.safetensors").stat().st_mtime_ns == weights  # the fine-tune was not redone
    after = _markers(new)
    assert len(after) == 3 and all(after[name] == stamp for name, stamp in kept.items())  # done shards not redone
    assert result["reembed"]["shards_done"] == 3
    assert pq.read_table(new / "data").num_rows == pq.read_table(store / "data").num_rows
    assert result["old"]["n"] == result["new"]["n"] == 7 and isinstance(result["publish"], bool)


def test_wikiembed_improve_runs_the_loop_from_the_command_line(improved, compact_store, capsys):
    """`wikiembed improve` with the flow's options: the titles as pairs, 1 epoch; the decision is the flow's."""
    from wikiembed.flows.cli import main
    from wikiembed.improve import decide
    from wikiembed.results import Figures

    pairs, out, new, code, payload, printed, err = improved
    assert code == 0, err[-3000:]
    result = json.loads(payload.read_text())
    assert (result["metric"], result["margin"], result["finetune"]["settings"]["batch_size"]) == ("recall_at_10", 0.02, 8)
    assert (result["publish"], result["reason"]) == decide(Figures.from_json(result["difference"]), "recall_at_10", 0.02)
    assert result["published"] is None and result["old"]["n"] == result["new"]["n"] == 7
    assert result["reembed"]["embedded_chunks"] == result["reembed"]["chunks"] == pq.read_table(compact_store / "data").num_rows
    assert json.loads((new / "manifest.json").read_text())["model"]["model_id"] == str(out.resolve())
    assert f"into {out.resolve()}" in printed and "held out 7 queries" in printed
    assert f"{'publish' if result['publish'] else 'keep'}" in printed.splitlines()[-1] and result["reason"] in printed
    assert f"re-embedded {result['reembed']['chunks']:,} chunks into {new}" in printed
    # The same command again: the round is done, so nothing is embedded again, and the line says so.
    assert main(["improve", "--store", str(compact_store), "--pairs", str(pairs), "--out", str(out), "--new-store", str(new),
                 *IMPROVE_OPTIONS]) == 0
    again = capsys.readouterr().out
    assert f"re-embedded 0 of the {result['reembed']['chunks']:,} chunks of {new} (3/3 shards)" in again, again


@pytest.mark.parametrize(
    "case, needle",
    [
        ("same store", "is the store being improved"),
        ("volume new store", "is on a Modal Volume, but the store"),
        ("margin", "--margin:"),
        ("no pairs", "no such file"),
    ],
)
def test_wikiembed_improve_bad_input_exits_2_with_one_message(case, needle, compact_store, tmp_path, capsys):
    from wikiembed.flows.cli import main

    pairs, new, extra = tmp_path / "pairs.jsonl", str(tmp_path / "new-store"), []
    pairs.write_text('{"query": "a", "id": "x"}\n')
    if case == "same store":
        new = str(compact_store)
    elif case == "volume new store":
        new = "modal:wikiembed-store/new"
    elif case == "margin":
        extra = ["--margin", "2"]
    else:
        pairs = tmp_path / "missing.jsonl"
    out = tmp_path / "model"
    assert main(["improve", "--store", str(compact_store), "--pairs", str(pairs), "--out", str(out), "--new-store", new, *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("error:") == 1, err
    assert not out.exists() and not (tmp_path / "new-store").exists()


def test_wikiembed_improve_refuses_too_few_held_out_queries_before_the_fine_tune(compact_store, topics, tmp_path, capsys):
    """21 queries, 5% held out: 1 query would decide; refused with how many are missing, before anything is trained."""
    from wikiembed.flows.cli import main

    pairs = title_pairs(topics, tmp_path / "pairs.jsonl")
    pairs.write_text("".join(pairs.read_text().splitlines(keepends=True)[:21]))
    out, new, payload = tmp_path / "model", tmp_path / "new-store", tmp_path / "improve.json"
    started = time.monotonic()
    code = main(["improve", "--store", str(compact_store), "--pairs", str(pairs), "--out", str(out), "--new-store", str(new),
                 "--holdout", "0.05", "--json", str(payload)])
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "1 of its 21 queries that match the store held out (--holdout 0.05), 19 short of the 20" in err, err
    assert "--min-holdout" in err and err.count("error:") == 1, err
    assert not out.exists() and not new.exists() and not payload.exists() and not list(tmp_path.glob(".model*"))
    assert took < 60, took  # no training: a fine-tune of these takes minutes on this CPU
