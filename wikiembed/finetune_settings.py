"""How a fine-tune is run: its settings and their limits, without the training code.

The command line builds its options from these (every `wikiembed` call does, `status` too), so this module
imports nothing heavy; wikiembed.finetune does the work.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Store hits looked at per query: hard negatives are the first non-relevant ones, and the held-out pool
# takes this many per held-out query (20 per query keeps the pool a few thousand chunks at 200 queries).
MINE_DEPTH = 20


class FinetuneSettings(BaseModel):
    """How to fine-tune; every field is recorded in the model card and `finetune.json`."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(1, ge=1, description="passes over the training pairs")
    batch_size: int = Field(32, ge=2, description="pairs per batch: each query's in-batch negatives are the other positives")
    learning_rate: float = Field(2e-5, gt=0, description="AdamW learning rate, warmed up over the first 10% of steps")
    holdout: float = Field(0.2, gt=0, lt=1, description="share of the queries held out, never trained on")
    seed: int = Field(0, description="seeds the held-out split and the training order")
    negatives: int = Field(1, ge=0, le=MINE_DEPTH - 1, description="hard negatives mined per pair from the store's vectors")
    device: Literal["cpu", "cuda"] | None = Field(None, description="where to train: cpu or cuda (default: cuda when present)")
    max_seq_length: int | None = Field(
        None, ge=8, description="tokens read of each text while training (default: the model's own limit); fewer train "
        "faster on long chunks, and the saved model keeps its own limit")
