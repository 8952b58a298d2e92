"""Run settings: the one definition of every option a run takes.

Each option is defined once here (name, type, default, description, order).
The `wikiembed run` flags are generated from these fields (flows/commands/base.py), the
`embed-dataset` flow's parameters are these fields (so the Prefect UI form shows
their descriptions, most important first, with the advanced ones in groups), and
the manifest records them so `rerun` re-embeds with the store's settings.

Touches: nothing but a look at whether `model` names a local folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, GetJsonSchemaHandler, StringConstraints, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from wikiembed import executors
from wikiembed.errors import InputError
from wikiembed.model import DEFAULT_MODEL

# Tens of MB of text per shard at Wikipedia's ~3k chars/article (English), ~1.1k
# (Simple): enough work per Prefect task that orchestration stays in the noise,
# and few enough tasks per run (English: ~320) for Prefect's API.
DEFAULT_SHARD_ROWS = 20_000


def _in_definition_order(schema: dict[str, Any]) -> None:
    # Prefect's form sorts an object's fields alphabetically unless each carries a
    # `position`; the order they are defined in here is the order of importance.
    for position, prop in enumerate(schema.get("properties", {}).values()):
        prop["position"] = position


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_in_definition_order)


class ReadOptions(_Options):
    """How the source is read: which split, and which of its columns are ours."""

    split: str = Field("train", description="Dataset split to read (Hub datasets and save_to_disk folders).")
    columns: str | None = Field(
        None, description="Column mapping ours=theirs for datasets with other column names, e.g. text=body,id=page_id."
    )


class ChunkingOptions(_Options):
    """How articles are cut into the texts that are embedded. Changing them needs a new store."""

    chunker: Literal["tokens", "chars"] = Field(
        "tokens",
        description="tokens: paragraph/sentence-aware windows counted in the model's tokens (nothing truncated); "
        "chars: fixed character windows.",
    )
    chunk_size: int | None = Field(
        None, ge=1, description="Window size in tokens (tokens chunker) or characters (chars chunker); default: the model's limit / 512 chars."
    )
    chunk_overlap: int = Field(0, ge=0, description="Tokens or characters shared by consecutive windows.")


class ComputeOptions(_Options):
    """Where the embedding runs and how wide: device, shards in flight, TEI servers, the Modal app."""

    # A plain choice with a default (no null), so the Prefect form shows a list to pick from.
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Device of the local backend: auto (cuda when present), cpu or cuda.")
    concurrency: int | None = Field(
        None, ge=1, description="Shards embedded at once (default: 2 local, 16 TEI or twice the shard workers, the deployed capacity on Modal)."
    )
    tei_url: list[str] = Field(
        default_factory=list, description="TEI server URLs for backend tei (a list, or one comma-separated string)."
    )
    shard_workers: int | None = Field(
        None, ge=1, description="Processes on this machine that chunk, send and write shards for backend tei (default: one per core)."
    )
    modal_app: str | None = Field(None, description="Deployed Modal app (default: wikiembed-tei or wikiembed-torch, by class).")
    modal_class: Literal["TEI", "Torch"] = Field("TEI", description="Modal class: TEI, or our PyTorch engine (Torch).")
    gpu: str | None = Field(None, description="GPU for the Modal app's calls, e.g. H100 (default: as deployed).")
    tokenizer: Literal["auto", "tokenizers"] = Field(
        "auto",
        description="Who counts tokens on this machine: auto (blingfire where it gives exactly the ids of tokenizers, "
        "several times faster) or tokenizers (always the reference). The chunks are the same either way.",
    )

    @field_validator("device", mode="before")
    @classmethod
    def _unset_device_is_auto(cls, value: object) -> object:
        return "auto" if value is None else value  # the settings of stores made when "unset" was null

    @field_validator("tei_url", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return [u.strip() for u in value.split(",") if u.strip()]
        return value or []


class OutputOptions(_Options):
    """What is stored and checked beside the float32 vectors: smaller forms (fewer dimensions, lower precisions), a retrieval check."""

    dimensions: list[int] = Field(
        default_factory=list,
        description="Also store vectors truncated to these numbers of dimensions, renormalized (Matryoshka), e.g. 384,128.",
    )
    precision: list[Literal["float32", "float16", "int8", "binary"]] = Field(
        default_factory=list, description="Extra stored precisions of the vectors: float32, float16, int8, binary."
    )
    eval_sample: int | None = Field(
        None, ge=1, description="After a complete run, check retrieval on this many articles, titles as queries (as wikiembed eval)."
    )
    index: list[str] = Field(
        default_factory=list,
        description="After a complete run, build an approximate index of these stored forms for search and eval "
        "(as wikiembed index), e.g. float32,binary; needs pip install 'wikiembed[index]'.",
    )

    @field_validator("precision", "dimensions", "index", mode="before")
    @classmethod
    def _split_lists(cls, value: object) -> object:
        if isinstance(value, int):
            return [value]
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value or []


def _known_executor(name: str) -> str:
    known = executors.names()
    if name not in known:
        raise ValueError(f"backend {name!r} is not an executor here: use one of {', '.join(known)}")
    return name


class _ExecutorChoices:
    """The JSON schema of an executor's name: a choice among the executors known when the schema is built
    (Prefect builds a deployment's form when the deployment is made), not when this module was imported, so
    an executor registered after the import is listed too."""

    def __get_pydantic_json_schema__(self, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string", "enum": executors.names()}


# Any registered executor (`wikiembed.executors`): validated against the registry when a run's settings are.
ExecutorName = Annotated[str, AfterValidator(_known_executor), _ExecutorChoices()]


class RunSettings(_Options):
    """Embed a dataset into a run store; resume whatever a previous run left undone."""

    source: str = Field(
        "sample:1000",
        description="What to embed: a Hugging Face dataset id (e.g. wikimedia/wikipedia), a parquet/jsonl file or folder, "
        "a save_to_disk folder, or sample:N (built-in articles, no network).",
    )
    config: str | None = Field(
        None, description="Hugging Face dataset config, e.g. 20231101.simple, or latest.simple: the newest YYYYMMDD.simple dump (Hub sources only)."
    )
    store: str = Field(
        description="Run store folder: one per source, model and chunking; a rerun of the same settings resumes it."
    )
    model: str = Field(DEFAULT_MODEL, description="sentence-transformers model id, or the folder of a fine-tuned model.")
    prompt_name: str | None = Field(
        None,
        description="The model's prompt put before every document (default: its document/passage/corpus prompt, "
        "else its default prompt, as encode_document picks it; '' for none).",
    )
    query_prompt_name: str | None = Field(
        None, description="The model's prompt put before queries by search and eval (default: its query prompt, as encode_query picks it; '' for none)."
    )
    trust_remote_code: bool = Field(
        False, description="Run model code shipped inside the model folder (auto_map); only for models you trust."
    )
    backend: ExecutorName = Field(
        "local", description="Where vectors are computed: local (in-process PyTorch), tei (servers by URL), modal (a deployed app)."
    )
    upload_to: str | None = Field(
        None, description="Publish when every shard is done: hub:ORG/NAME (a Hub dataset repo) or dir:PATH "
        "(modal:VOLUME/PATH from a store on a Modal Volume); empty: keep it in the store."
    )
    limit: int | None = Field(None, ge=1, description="Read only the first N source rows (for a trial run).")
    shard_rows: int | None = Field(
        None,
        ge=1,
        description="Source rows per shard, the unit of work, retry and rerun "
        f"(default: the store's recorded plan, or {DEFAULT_SHARD_ROWS:,} for a new store).",
    )
    chunking: ChunkingOptions = Field(default_factory=ChunkingOptions, description=ChunkingOptions.__doc__)
    reading: ReadOptions = Field(default_factory=ReadOptions, description=ReadOptions.__doc__)
    compute: ComputeOptions = Field(default_factory=ComputeOptions, description=ComputeOptions.__doc__)
    output: OutputOptions = Field(default_factory=OutputOptions, description=OutputOptions.__doc__)

    @field_validator("model")
    @classmethod
    def _absolute_model_folder(cls, value: str) -> str:
        # A model folder is recorded as an absolute path, so a rerun from another directory finds it.
        folder = Path(value).expanduser()
        return str(folder.resolve()) if folder.is_dir() else value

    @model_validator(mode="before")
    @classmethod
    def _group_flat_options(cls, data: Any) -> Any:
        """Move flat options (the CLI's flags, manifests written before options were grouped) into their group."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for group, model in GROUPS.items():
            flat = {k: data.pop(k) for k in list(data) if k in model.model_fields}
            if flat:
                given = data.get(group) or {}
                data[group] = {**(given.model_dump() if isinstance(given, BaseModel) else given), **flat}
        return data


GROUPS: dict[str, type[_Options]] = {
    "chunking": ChunkingOptions,
    "reading": ReadOptions,
    "compute": ComputeOptions,
    "output": OutputOptions,
}


def option_fields() -> list[tuple[str, FieldInfo]]:
    """Every option as (name, field), flat and in order of importance: the CLI's flags."""
    fields: list[tuple[str, FieldInfo]] = []
    for name, field in RunSettings.model_fields.items():
        group = GROUPS.get(name)
        fields += list(group.model_fields.items()) if group else [(name, field)]
    return fields


# Which shards a rerun re-embeds. `prefect deployment run -p shards=...` sends a value that
# parses as JSON as JSON (1, [1, 2]) and anything else as text ("1,2", "failed"): all are accepted.
# The Prefect form shows a text box for this field: what its help names, `3,17`, `[3, 17]` or
# `failed`, must pass the form's check as typed.
_IDS = r"\d+(\s*,\s*\d+)*"
ShardSelection = list[int] | int | Annotated[str, StringConstraints(pattern=rf"^\s*(failed|{_IDS}|\[\s*{_IDS}\s*\])\s*$")]


def parse_shards(selection: ShardSelection) -> list[int] | Literal["failed"]:
    """`"failed"`, or the sorted, distinct shard ids of `[0, 1]`, `1`, `"0,1"` or `"[0, 1]"`."""
    if isinstance(selection, str) and selection.strip() == "failed":
        return "failed"
    try:
        ids = [selection] if isinstance(selection, int) else selection
        if isinstance(ids, str):
            ids = [int(x) for x in ids.strip().removeprefix("[").removesuffix("]").split(",") if x.strip()]
        ids = sorted({int(k) for k in ids})
    except (TypeError, ValueError):
        ids = []
    if not ids:
        raise InputError(f"--shards {selection!r}: give shard ids (3,17 or [3, 17]) or 'failed'.")
    return ids
