"""Run settings: one definition behind the CLI flags, the flow's parameters and the Prefect form."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from wikiembed.errors import InputError
from wikiembed.settings import RunSettings, option_fields, parse_shards


def test_flat_options_land_in_their_group():
    """CLI flags and manifests written before the groups existed are flat."""
    flat = RunSettings(store="s", chunk_size=128, tei_url="http://a:1, http://b:2", split="validation", shard_rows=7)
    grouped = RunSettings(store="s", chunking={"chunk_size": 128}, compute={"tei_url": ["http://a:1", "http://b:2"]},
                          reading={"split": "validation"}, shard_rows=7)
    assert flat == grouped
    assert flat.chunking.chunk_size == 128 and flat.compute.tei_url == ["http://a:1", "http://b:2"]
    assert RunSettings(**flat.model_dump()) == flat  # what the manifest records reads back


def test_unknown_or_bad_options_are_refused_by_name():
    with pytest.raises(ValidationError, match="chunk_sise"):
        RunSettings(store="s", chunking={"chunk_sise": 3})
    with pytest.raises(ValidationError, match="chunk_overlap"):
        RunSettings(store="s", chunk_overlap=-1)


def test_every_option_is_described_once_and_named_once():
    fields = option_fields()
    names = [name for name, _ in fields]
    assert len(names) == len(set(names))
    assert all(field.description for _, field in fields)
    assert names[:3] == ["source", "config", "store"]  # most important first


@pytest.mark.parametrize(
    "given,ids", [([0, 1], [0, 1]), ("0,1", [0, 1]), ("[3, 17]", [3, 17]), (" [ 1,0 ] ", [0, 1]), (" 3 , 1,3", [1, 3]), (2, [2]), ("failed", "failed")]
)
def test_shard_selection_takes_a_list_text_or_failed(given, ids):
    assert parse_shards(given) == ids


@pytest.mark.parametrize("given", ["x,y", "", [], "[]"])
def test_a_bad_shard_selection_names_the_fix(given):
    with pytest.raises(InputError, match="--shards"):
        parse_shards(given)


def test_the_flow_form_is_the_settings():
    """Prefect's parameter schema of the flow: every field described, in order, groups as objects."""
    from prefect.utilities.callables import parameter_schema

    from wikiembed.flows.embed_dataset import embed_dataset, rerun_shards

    schema = parameter_schema(embed_dataset).model_dump_for_openapi()
    props = schema["properties"]
    assert list(props) == list(RunSettings.model_fields)
    assert [p["position"] for p in props.values()] == list(range(len(props)))
    assert schema["required"] == ["store"]
    for name, prop in props.items():
        if "$ref" in prop:  # a group: its model's docstring, and every field of it described and ordered
            group = schema["definitions"][prop["$ref"].rsplit("/", 1)[-1]]
            assert group["description"]
            assert all(f["description"] for f in group["properties"].values()), name
            assert [f["position"] for f in group["properties"].values()] == list(range(len(group["properties"])))
        else:
            assert prop["description"] == RunSettings.model_fields[name].description
    rerun = parameter_schema(rerun_shards).model_dump_for_openapi()["properties"]
    assert all(p["description"] for p in rerun.values())


def test_an_executor_registered_after_the_import_is_offered_by_the_run_form() -> None:
    """The form's choice of `backend` is built with the form (a deployment's, when it is made), not when the
    settings module was imported: an executor registered later is listed, and a run may name it."""
    from prefect.utilities.callables import parameter_schema

    from wikiembed import executors
    from wikiembed.flows.embed_dataset import embed_dataset

    assert "late" not in RunSettings.model_json_schema()["properties"]["backend"]["enum"]
    executors.register("late", "wikiembed.executors.in_process:InProcess")
    try:
        form = parameter_schema(embed_dataset).model_dump_for_openapi()["properties"]["backend"]
        assert form["enum"] == [*executors.names()] and form["enum"][-1] == "late" and form["default"] == "local"
        assert RunSettings.model_json_schema()["properties"]["backend"]["enum"][-1] == "late"
        assert RunSettings(store="s", backend="late").backend == "late"
    finally:
        executors.unregister("late")
    assert "late" not in parameter_schema(embed_dataset).model_dump_for_openapi()["properties"]["backend"]["enum"]
    with pytest.raises(ValidationError, match="backend 'late' is not an executor here: use one of local, tei, modal"):
        RunSettings(store="s", backend="late")
