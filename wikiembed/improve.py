"""The improve loop's settings and its verdict: is the fine-tuned store better enough to publish?

The loop (`flows/improve_model.py`) fine-tunes the store's model on judged queries, re-embeds the
store's source with it into a new store, and scores both stores on the fine-tune's held-out queries
(never trained on). `decide` reads the paired difference of the chosen metric: the new store is
published only when the difference is at least `margin` and its 95% interval lies wholly above zero,
so a lucky draw of a few queries never replaces what users search; fewer than `min_holdout` held-out
queries are refused before anything is trained.

Touches: nothing (plain values in, plain values out).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from wikiembed.finetune_settings import FinetuneSettings
from wikiembed.results import Figures

Metric = Literal["mrr", "recall_at_1", "recall_at_10", "ndcg_at_10"]
# The fewest held-out queries a publish decision is made on. The interval is a normal approximation of a mean
# of bounded, skewed per-query differences, which wants about 20 values or more (at 20 the normal quantile is
# still within 7% of Student's t); one query then moves a recall by at most 5 points; and 20 equal differences
# (no spread) still leave an interval 0.17 of the range wide on each side (`evaluate.mean_interval`).
MIN_HOLDOUT = 20


class ImproveSettings(BaseModel):
    """Fine-tune a store's model on judged queries, re-embed its source, and publish the new vectors only if better."""

    model_config = ConfigDict(extra="forbid")

    store: str = Field(description="The published store whose model is improved: a local run store folder, or modal:VOLUME/PATH.")
    pairs: str = Field(description="Judged queries (jsonl or parquet: query with its relevant id, ids, or id + chunk_index), e.g. the file `wikiembed serve --feedback` appends to; it must exist. A relative path (here and in out, new_store, store) is read from the working folder: for a deployment's run, the worker's clone that `prefect deploy` ran in. On the store's Volume for a Volume store.")
    out: str = Field(description="A new folder for the fine-tuned model (e.g. models/2026-w49); modal:VOLUME/PATH on the store's Volume for a Volume store.")
    new_store: str = Field(description="A new run store for the source re-embedded with the fine-tuned model; on the store's Volume for a Volume store.")
    upload_to: str | None = Field(
        None, description="Where the better store is published: hub:ORG/NAME or dir:PATH (modal:VOLUME/PATH from a Volume store); empty: only decide and report."
    )
    serve_link: str | None = Field(
        None, description="A symbolic link to a store, as `wikiembed serve --store` was given it: pointed at the new store when it is better, so the service answers from it without a restart (a local store only)."
    )
    metric: Metric = Field("mrr", description="The figure that decides: mrr (MRR@10), recall_at_1, recall_at_10 or ndcg_at_10.")
    margin: float = Field(0.01, ge=0, le=1, description="How much better the new store must be on that figure, at least.")
    min_holdout: int = Field(
        MIN_HOLDOUT, ge=1, description="The fewest held-out queries the decision is made on; fewer are refused before the fine-tune."
    )
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings, description=FinetuneSettings.__doc__)


def decide(difference: Figures, metric: Metric, margin: float) -> tuple[bool, str]:
    """(publish?, why) from the paired difference (new minus old) of one store comparison."""
    value = difference.value(metric)
    lo, hi = difference.interval(metric)
    figure = f"{metric} {value:+.3f} [95% interval {lo:+.3f}, {hi:+.3f}]"
    if value < margin:
        return False, f"not better by the margin: {figure}, below the required +{margin:.3f}; the old store stays published."
    if lo <= 0:
        return False, (f"not surely better: {figure} reaches zero, so the gain may be chance; the old store stays published "
                       "(more held-out queries narrow the interval).")
    return True, f"better: {figure}, at least +{margin:.3f} and above zero throughout."
