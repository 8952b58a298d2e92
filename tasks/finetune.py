"""The fine-tune step of the improve loop (wikiembed/finetune.py).

Retried once on an unknown failure (a worker lost mid-training); a rerun after a finished fine-tune
returns the one recorded in its folder instead of training again. A store on a Modal Volume is
fine-tuned in the `wikiembed-finetune` app next to it (`wikiembed.store_location`): only paths go
out and the record comes back.

Its run log gets one line per logging step of the training (epoch, step of steps, loss) and, inside a flow
run, a progress artifact follows the steps. Prints are not logged (`log_prints=False`): the libraries it
drives print what is no news to a person (datasets hashing a function through dill prints its bytecode).

Touches: the store's data files and the pairs file (read), the model folder (written), Prefect's API (logs,
an artifact); for a Volume store, Modal's API only.
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext

from wikiembed.finetune_settings import FinetuneSettings
from wikiembed.results import FinetuneRecord
from wikiembed.tasks.retry import retry_transient
from wikiembed.store_location import locate


class _RunReport:
    """Each step to the run's log and the terminal (the CLI's console shows no log), and to a progress artifact
    when inside a flow run."""

    def __init__(self, store: str) -> None:
        self.logger = get_run_logger()
        self.artifact = (create_progress_artifact(0.0, description=f"fine-tune of the model of {store}")
                         if FlowRunContext.get() is not None else None)

    def __call__(self, line: str, done: float) -> None:
        self.logger.info("%s", line)
        print(line, file=sys.stderr, flush=True)
        if self.artifact is not None:
            update_progress_artifact(self.artifact, done * 100)

    def finished(self) -> None:
        """A fine-tune found already done (a rerun) trained nothing: its bar is full all the same."""
        if self.artifact is not None:
            update_progress_artifact(self.artifact, 100.0)

    def __enter__(self) -> "_RunReport":
        return self

    def __exit__(self, failed: object, *exc: object) -> None:
        if failed is None:
            self.finished()


@task(name="finetune", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient, log_prints=False)
def finetune_task(store: str, pairs: str, out: str, settings: dict[str, Any], min_holdout: int = 1) -> FinetuneRecord:
    """Fine-tune the store's model into `out`; return its record (`finetune.json`). A local store's fine-tune
    refuses, before training, a split holding out fewer than `min_holdout` queries (the flow checks a Volume
    store's record instead)."""
    # Where the store is: in this process (its steps reported here), or on a GPU at its Volume (the model folder
    # is written there).
    return locate(store).finetune(pairs, out, FinetuneSettings(**settings), min_holdout=min_holdout,
                                  reporter=lambda: _RunReport(store))
