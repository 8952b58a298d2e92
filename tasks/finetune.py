"""The fine-tune step of the improve loop (wikiembed/finetune.py).

Retried once on an unknown failure (a worker lost mid-training); a rerun after a finished fine-tune
returns the one recorded in its folder instead of training again. A store on a Modal Volume is
fine-tuned in the `wikiembed-finetune` app next to it (`wikiembed.volume_improve`): only paths go
out and the record comes back.

Touches: the store's data files and the pairs file (read), the model folder (written); for a Volume
store, Modal's API only.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from wikiembed.finetune import FinetuneSettings, finetune
from wikiembed.tasks.retry import retry_transient
from wikiembed.volume_improve import finetune_on_volume
from wikiembed.volume_store import parse_spec


@task(name="finetune", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def finetune_task(store: str, pairs: str, out: str, settings: dict[str, Any], min_holdout: int = 1) -> dict[str, Any]:
    """Fine-tune the store's model into `out`; return its record (`finetune.json`). A local store's fine-tune
    refuses, before training, a split holding out fewer than `min_holdout` queries (the flow checks a Volume
    store's record instead)."""
    if parse_spec(store):  # on a GPU at the Volume: the model folder is written there
        return finetune_on_volume(store, pairs, out, FinetuneSettings(**settings).model_dump())
    return finetune(store, pairs, out, FinetuneSettings(**settings), min_holdout=min_holdout)
