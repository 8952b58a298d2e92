"""Run settings: one typed, validated object for everything a run needs.

The same model backs the CLI flags, the Prefect flow parameters (so the UI
shows a form) and the manifest (so `rerun` uses the store's recorded
settings). Validation errors name the flag and the fix.

Touches: nothing but a look at whether `model` names a local folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from wikiembed.model import DEFAULT_MODEL

# Tens of MB of text per shard at Wikipedia's ~3k chars/article (English), ~1.1k
# (Simple): enough work per Prefect task that orchestration stays in the noise,
# and few enough tasks per run (English: ~320) for Prefect's API.
DEFAULT_SHARD_ROWS = 20_000


class RunSettings(BaseModel):
    """Everything `wikiembed run` / the `embed-dataset` flow takes."""

    source: str = Field("sample:1000", description="sample:N, a parquet/jsonl file or folder, a save_to_disk folder, or a HF dataset id")
    store: str = Field("runs/sample", description="run store folder (one per source, model and chunking)")
    config: str | None = Field(None, description="HF dataset config, e.g. 20231101.simple, or latest.simple for the newest dump")
    split: str = "train"
    limit: int | None = Field(None, ge=1, description="read only the first N source rows")
    columns: str | None = Field(None, description="column mapping ours=theirs, e.g. text=body,id=page_id")
    backend: Literal["local", "tei", "modal"] = "local"
    model: str = Field(DEFAULT_MODEL, description="sentence-transformers model id or local folder")
    device: Literal["cpu", "cuda"] | None = None
    chunker: Literal["tokens", "chars"] = "tokens"
    chunk_size: int | None = Field(None, ge=1, description="tokens (tokens chunker) or characters (chars chunker)")
    chunk_overlap: int = Field(0, ge=0)
    shard_rows: int | None = Field(
        None, ge=1, description=f"articles per shard (default: the store's recorded plan, or {DEFAULT_SHARD_ROWS:,} for a new store)"
    )
    tei_url: list[str] = Field(default_factory=list, description="TEI server URLs for --backend tei")
    modal_app: str | None = Field(None, description="deployed Modal app (default: wikiembed-tei or wikiembed-torch by class)")
    modal_class: Literal["TEI", "Torch"] = "TEI"
    gpu: str | None = Field(None, description="GPU the Modal app was deployed with (default: as deployed)")
    concurrency: int | None = Field(None, ge=1, description="shards embedded at once (default: per backend)")
    upload_to: str | None = Field(None, description="dir:PATH or hub:ORG/NAME to publish to when all shards are done")
    dimensions: list[int] = Field(
        default_factory=list, description="also store vectors truncated to these numbers of dimensions, renormalized (Matryoshka)"
    )
    eval_sample: int | None = Field(
        None, ge=1, description="after a complete run, check retrieval on this many articles (titles as queries)"
    )
    precision: list[Literal["float32", "float16", "int8", "binary"]] = Field(
        default_factory=list, description="extra stored precisions of the vectors: float32, float16, int8, binary"
    )

    @field_validator("precision", "dimensions", mode="before")
    @classmethod
    def _split_lists(cls, value: object) -> object:
        if isinstance(value, int):
            return [value]
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value or []

    @field_validator("model")
    @classmethod
    def _absolute_model_folder(cls, value: str) -> str:
        # A model folder is recorded as an absolute path, so a rerun from another directory finds it.
        folder = Path(value).expanduser()
        return str(folder.resolve()) if folder.is_dir() else value

    @field_validator("tei_url", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return [u.strip() for u in value.split(",") if u.strip()]
        return value or []
