"""What a flow run's log holds, read through the API the UI reads, for runs started the way a deployment's worker
starts them (Prefect's engine, which logs what the flow run ended with): a user's mistake or a failed shard ends the
run Failed with its message, in the state and in the log, and no traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.flow_engine import flow_run_logger, run_flow
from prefect.logging.handlers import APILogHandler

from tests.flows import faults
from wikiembed.errors import WikiembedError
from wikiembed.flows.embed_dataset import embed_dataset
from wikiembed.flows.improve_model import improve_model


def run_as_deployment(flow: Any, **parameters: Any) -> tuple[Any, list[str], WikiembedError | None]:
    """(final state, log messages, the error the engine raised) of a flow run created in the API and run by the engine."""
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(flow, parameters=parameters)
    raised = None
    try:
        run_flow(flow, flow_run=flow_run, error_logger=flow_run_logger(flow_run))
    except WikiembedError as exc:
        raised = exc
    APILogHandler().flush()  # log records reach the API in batches
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
    return state, [log.message for log in logs], raised


def _no_traceback(messages: list[str]) -> None:
    assert not [m for m in messages if "Traceback" in m or "Engine execution exited" in m], "\n".join(messages)


def test_a_missing_store_ends_the_improve_run_with_its_message(prefect_api: str, tmp_path: Path) -> None:
    (tmp_path / "pairs.jsonl").write_text('{"query": "a", "id": "x"}\n')
    state, messages, raised = run_as_deployment(
        improve_model, store=str(tmp_path / "missing"), pairs=str(tmp_path / "pairs.jsonl"), out=str(tmp_path / "model"),
        new_store=str(tmp_path / "new"))
    assert state.is_failed() and raised is not None and state.message == str(raised), state.message
    assert str(tmp_path / "missing") in state.message
    _no_traceback(messages)
    assert str(raised) in messages


def test_a_missing_source_ends_the_embed_run_with_its_message(prefect_api: str, tmp_path: Path) -> None:
    state, messages, raised = run_as_deployment(embed_dataset, source=str(tmp_path / "nothing.parquet"), store=str(tmp_path / "store"))
    assert state.is_failed() and raised is not None and state.message == str(raised), state.message
    assert "no such file or folder" in state.message
    _no_traceback(messages)


def test_failed_shards_end_the_embed_run_with_the_message_alone(prefect_api: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    faults.install(monkeypatch, poison=" ")  # every chunk holds a space: the one shard fails
    state, messages, raised = run_as_deployment(embed_dataset, source="sample:10", store=str(tmp_path / "store"), shard_rows=20)
    assert state.is_failed() and state.message.startswith("1/1 shards failed: BackendError: injected"), state.message
    _no_traceback(messages)
    assert any(m.startswith("shard 00000 failed after") for m in messages)


def test_the_improve_form_s_default_pairs_file_missing_stops_the_run_before_any_work(prefect_api: str, tmp_path: Path,
                                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The deployment's default pairs path is relative to the worker's folder, where a fresh clone holds no such file:
    the run stops at once, naming the path, where it was looked for, and what to give instead."""
    monkeypatch.chdir(tmp_path)  # the worker's clone
    (tmp_path / "store").mkdir()
    state, messages, raised = run_as_deployment(improve_model, store="store", pairs="feedback/served.jsonl", out="models/next",
                                                new_store="runs/next")
    assert state.is_failed() and raised is not None, state.message
    assert state.message.startswith("pairs feedback/served.jsonl: no such file (a relative path is read from the working "
                                    f"folder, here {tmp_path})"), state.message
    assert "wikiembed serve --feedback" in state.message
    assert not (tmp_path / "models").exists() and not (tmp_path / "runs").exists()
    _no_traceback(messages)
