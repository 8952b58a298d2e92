"""The estimate a run shows before its shards: its rate is measured where the run runs, and it says
by what (real Prefect API, real bundled model, the built-in sample)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from wikiembed.flows.cli import main
from wikiembed.flows.embed_dataset import embed_dataset
from wikiembed.flows.run_reports import artifact_key
from wikiembed.store import Store


def _estimate_artifact(store: Path) -> str:
    """The newest version of the store's estimate artifact (asked for by key: the suite's other tests
    write many artifacts to the same server)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    key = artifact_key("estimate", Store(store))
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC)
    assert found, "no estimate artifact"
    return str(found[0].data)


def test_a_fresh_local_run_on_the_cpu_calibrates_its_rate_and_says_so(prefect_api, tmp_path, capsys):
    store = tmp_path / "store"
    summary = embed_dataset(source="sample:40", store=str(store), shard_rows=20, compute={"device": "cpu"})
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("estimate: 40 articles"))
    assert "local on CPU: ~" in line and "(calibrated here: " in line and " chunks in " in line
    seconds = summary["predicted_vs_actual"]["seconds"]
    assert seconds["basis"] == "calibrated rate for local on CPU" and seconds["predicted"] > 0
    assert "calibrated here: " in _estimate_artifact(store)


def test_a_resumed_run_takes_the_rate_its_stores_done_shards_measured(prefect_api, tmp_path, capsys):
    store = tmp_path / "store"
    embed_dataset(source="sample:40", store=str(store), shard_rows=20, compute={"device": "cpu"})
    s = Store(store)
    kept = s.read_done(0)
    s.forget(1)  # as if the run had been stopped after its first shard
    rate = kept.embedded_chars / kept.seconds
    # `wikiembed estimate` takes it too when given the store, and only then.
    options = {}
    for extra in (["--store", str(store)], []):
        out = tmp_path / "estimate.json"
        assert main(["estimate", "--source", "sample:40", "--backend", "local", "--gpu", "CPU", "--json", str(out), *extra]) == 0
        options[bool(extra)] = json.loads(out.read_text())["options"][0]
    assert options[True]["basis"] == "store-measured" and options[True]["rate_chars_per_s"] == pytest.approx(rate, rel=0.01)
    assert options[False]["basis"] == "measured"
    capsys.readouterr()
    summary = embed_dataset(source="sample:40", store=str(store), shard_rows=20, compute={"device": "cpu"})
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("estimate: 20 articles"))
    assert "(measured by this store's 1 done shard)" in line and "calibrated" not in line
    seconds = summary["predicted_vs_actual"]["seconds"]
    assert seconds["basis"] == "store-measured rate for local on CPU"
    # The predicted seconds are the pending shard's characters at the done shard's own rate.
    assert seconds["predicted"] == pytest.approx(sum(len(r) for r in _texts(s, 20, 40)) / rate, rel=0.01, abs=0.1)
    assert "measured by this store's 1 done shard" in _estimate_artifact(store)


def _texts(store: Store, start: int, end: int) -> list[str]:
    from wikiembed.sources import read_snapshot_rows

    return read_snapshot_rows(store.snapshot_path, start, end).column("text").to_pylist()
