"""The `improve-model` flow: fine-tune → re-embed → compare → publish only if better.

1. finetune: the store's model trained on judged queries, a seeded share held out
   (`wikiembed.finetune`; a rerun returns the fine-tune already in its folder);
2. re-embed: the store's source, with the store's recorded settings and the new model, into a new
   store through `embed-dataset` itself (fan-out, markers, resume: a rerun embeds only what is missing;
   nothing is reused from the old model's vectors);
3. compare: both stores scored on the held-out queries, with paired differences (fewer than `min_holdout`
   of them are refused before the fine-tune: too few to decide on);
4. publish: the new store's upload (`upload_to`) and the served link (`serve_link`, which `wikiembed serve`
   follows) repointed at it, only when `wikiembed.improve.decide` says it is better; otherwise the old
   store stays published, and the flow says why.

The decision, the figures and both models are a markdown artifact of the flow run, keyed by the store. Running the flow again with
the same parameters resumes it: finished steps return what they recorded.

A store on a Modal Volume (`modal:VOLUME/PATH`) is improved where it is, as its shards are embedded: the
pairs file, the model folder and the new store are `modal:VOLUME/PATH` on the same Volume; the fine-tune
and the comparison run in the `wikiembed-finetune` app (a GPU at the Volume), the re-embed's shard
containers load the new model from the Volume, and the export goes from the Volume. This machine moves
only paths, settings and figures: each step is an operation of the store's place
(`wikiembed.store_location`), the same call for either kind of store.

Touches: the old store (read), the model folder and the new store (written), the publish target and the
served link; for a Volume store, Modal's API only.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.states import Completed, State

from wikiembed.errors import ShardsFailed, StoreError
from wikiembed.executors import executor_for
from wikiembed.finetune import FinetuneSettings, check_holdout
from wikiembed.flows.embed_dataset import embed_dataset
from wikiembed.flows.flow_errors import ends_failed_on_user_errors
from wikiembed.flows.run_reports import add_flow_run_tags, artifact_key
from wikiembed.improve import MIN_HOLDOUT, ImproveSettings, Metric, decide
from wikiembed.results import (
    Comparison, Exported, Figures, FinetuneRecord, ImproveResult, ReembedCounts, RunSummary, StoreFigures,
)
from wikiembed.serving.link import check_link, point_link
from wikiembed.settings import RunSettings
from wikiembed.store_location import locate
from wikiembed.tasks.compare import compare_task
from wikiembed.tasks.export import export_task
from wikiembed.tasks.finetune import finetune_task

METRIC_NAMES = {"recall_at_1": "recall@1", "recall_at_10": "recall@10", "mrr": "MRR@10", "ndcg_at_10": "nDCG@10"}


def _report(settings: ImproveSettings, tuned: FinetuneRecord, compared: Comparison, publish: bool, why: str,
            published: Exported | None, new_revision: str) -> str:
    """The flow run's markdown artifact: the decision, the figures, both models."""
    old, new, diff = compared.old, compared.new, compared.difference

    def cell(block: Figures | StoreFigures, m: str, sign: str = "") -> str:
        lo, hi = block.interval(m)
        return f"{block.value(m):{sign}.3f} [{lo:{sign}.3f}, {hi:{sign}.3f}]"

    rows = "\n".join([
        "| old | " + " | ".join(cell(old, m) for m in METRIC_NAMES) + " |",
        "| new | " + " | ".join(cell(new, m) for m in METRIC_NAMES) + " |",
        "| new − old | " + " | ".join(cell(diff, m, "+") for m in METRIC_NAMES) + " |",
    ])
    outcome = f"published to `{settings.upload_to}`" if published else ("better; no `upload_to` given, nothing uploaded" if publish else "kept the old store")
    return f"""# improve-model: {'publish' if publish else 'keep'}

**Decision**: {outcome}. {why}

Held-out queries (never trained on): {old.n} scored over every chunk of each store (float32).
Deciding figure: {METRIC_NAMES[settings.metric]}, margin +{settings.margin:.3f}, the 95% interval of the
paired difference above zero.

| store | {' | '.join(METRIC_NAMES.values())} |
| --- | --- | --- | --- | --- |
{rows}

## Models

- **old**: `{tuned.base_model}` (revision `{tuned.base_revision}`), store `{old.store}` generation `{old.generation}`
- **new**: `{tuned.out}` (revision `{new_revision}`), store `{new.store}` generation `{new.generation}`
- fine-tuned on {tuned.train} queries ({tuned.pairs.unmatched} of {tuned.pairs.read} in the pairs file name
  nothing in the store), {tuned.settings['epochs']} epoch(s), {tuned.loss}, {tuned.seconds:.0f} s on {tuned.device}
"""


def _improve_run_name() -> str:
    params = flow_run.parameters
    return f"improve {params['store']} on {params['pairs']} into {params['new_store']}"


def _announce(store: str, decision: str, message: str, payload: dict[str, Any], related: list[dict[str, str]]) -> None:
    """The decision where the run list and automations see it: a `decision:` tag and an event about the store,
    `wikiembed.improve.published` or `wikiembed.improve.kept` (the figures in its payload)."""
    add_flow_run_tags([f"decision:{decision}"])
    emit_event(event=f"wikiembed.improve.{'published' if decision == 'publish' else 'kept'}",
               resource={"prefect.resource.id": f"wikiembed.store.{store}", "prefect.resource.name": store},
               related=related, payload={"message": message, **payload})


@flow(name="improve-model", flow_run_name=_improve_run_name, log_prints=True)
@ends_failed_on_user_errors
def improve_model(
    store: str,
    pairs: str,
    out: str,
    new_store: str,
    upload_to: str | None = None,
    serve_link: str | None = None,
    metric: Metric = "mrr",
    margin: float = 0.01,
    finetune: FinetuneSettings | None = None,
    min_holdout: int = MIN_HOLDOUT,
) -> dict[str, Any] | State:
    """Fine-tune a store's model on judged queries, re-embed its source, and publish the new vectors only if better.

    Args:
        store: The published store whose model is improved: a local run store folder, or modal:VOLUME/PATH.
        pairs: Judged queries (jsonl or parquet: query with its relevant id, ids, or id + chunk_index), e.g. the file `wikiembed serve --feedback` appends to; it must exist. A relative path (here and in out, new_store, store) is read from the working folder: for a deployment's run, the worker's clone that `prefect deploy` ran in. On the store's Volume for a Volume store.
        out: A new folder for the fine-tuned model (e.g. models/2026-w49); modal:VOLUME/PATH on the store's Volume for a Volume store.
        new_store: A new run store for the source re-embedded with the fine-tuned model; on the store's Volume for a Volume store.
        upload_to: Where the better store is published: hub:ORG/NAME or dir:PATH (modal:VOLUME/PATH from a Volume store); empty: only decide and report.
        serve_link: A symbolic link to a store, as `wikiembed serve --store` was given it: pointed at the new store when it is better, so the service answers from it without a restart (a local store only).
        metric: The figure that decides: mrr (MRR@10), recall_at_1, recall_at_10 or ndcg_at_10.
        margin: How much better the new store must be on that figure, at least.
        finetune: Fine-tune settings (epochs, batch size, learning rate, held-out share, seed, negatives, device).
        min_holdout: The fewest held-out queries the decision is made on; fewer are refused before the fine-tune.
    """
    settings = ImproveSettings(store=store, pairs=pairs, out=out, new_store=new_store, upload_to=upload_to, metric=metric,
                               margin=margin, finetune=finetune or FinetuneSettings(), serve_link=serve_link,
                               min_holdout=min_holdout)
    logger = get_run_logger()
    location = locate(settings.store)
    location.check_paths(settings.pairs, settings.out, settings.new_store)
    if settings.serve_link:
        check_link(settings.serve_link, location.volume)
    location.check_target(settings.upload_to, settings.new_store)  # where the new store goes, before the fine-tune
    manifest = location.published_manifest()
    recorded = manifest.settings
    add_flow_run_tags([f"model:{manifest.model.model_id}"])

    tuned = finetune_task(settings.store, settings.pairs, settings.out, settings.finetune.model_dump(), settings.min_holdout)
    # A local fine-tune refused a split this small before training; a Volume's, or one recorded before, is refused here.
    check_holdout(tuned.holdout, tuned.train + tuned.holdout, tuned.settings["holdout"], settings.min_holdout,
                  settings.pairs)
    logger.info("fine-tuned %s into %s: held-out MRR@10 on the pool %.3f -> %.3f", tuned.base_model, tuned.out,
                tuned.before.mrr, tuned.after.mrr)

    # The old store's own settings with the new model, into the new store; published only below, if better.
    # On a Volume the shard containers load the model from its folder there, under their mount.
    model = location.model_for_runs(tuned.out, settings.out)
    run = {**recorded, "store": settings.new_store, "model": model, "upload_to": None}
    state = embed_dataset(**run, return_state=True)
    if not state.is_completed():
        summary = state.data.summary if isinstance(state.data, ShardsFailed) else None
        if summary:
            counts = RunSummary.from_json(summary)
        done = f" ({counts.shards_done}/{counts.shards_total} shards done)" if summary else ""
        message = (f"re-embedding into {settings.new_store} did not finish{done}: {state.message}; run improve-model again "
                   "with the same parameters to resume it (finished shards are kept). The old store stays published.")
        raise ShardsFailed(message, summary) if summary else StoreError(message)
    reembedded = RunSummary.from_json(state.result())

    compared = compare_task(settings.store, settings.new_store, f"{tuned.out.rstrip('/')}/heldout.jsonl")
    difference = compared.difference
    publish, why = decide(difference, settings.metric, settings.margin)
    published = None
    if publish and settings.upload_to:
        executor = executor_for(RunSettings(**run))
        published = export_task(executor, settings.new_store, compared.new.generation, settings.upload_to)
    # The improved store, opened before the served link is repointed: given as the store, the link names it until then.
    old = location.open()
    served = point_link(settings.serve_link, settings.new_store) if publish and settings.serve_link else None
    logger.info("%s: %s", "publish" if publish else "keep the old store", why)
    old_root = str(old.root)
    # Keyed by the improved store: each store's latest decision under its own key.
    create_markdown_artifact(_report(settings, tuned, compared, publish, why, published, reembedded.revision),
                             key=artifact_key("improve", old), description="the decision, the figures and both models")
    decision = "publish" if publish else "keep"
    message = f"{decision}: {why}"
    _announce(old_root, decision, message, payload={
        "metric": settings.metric, "margin": settings.margin, "difference": difference.value(settings.metric),
        "ci95": list(difference.interval(settings.metric)), "upload_to": settings.upload_to if published else None,
        "new_store": settings.new_store, "new_model": tuned.out,
    }, related=[
        {"prefect.resource.id": f"wikiembed.store.{settings.new_store}", "prefect.resource.role": "new-store",
         "prefect.resource.name": settings.new_store},
        {"prefect.resource.id": f"wikiembed.model.{tuned.out}", "prefect.resource.role": "new-model",
         "prefect.resource.name": tuned.out},
    ])
    result = ImproveResult(publish, why, published, served, settings.metric, settings.margin, compared.old, compared.new,
                           difference, tuned, ReembedCounts.of(reembedded))
    return Completed(message=message, data=result.to_json())  # what leaves through Prefect is the record's JSON


if __name__ == "__main__":
    import sys

    print(improve_model(*sys.argv[1:5]))
