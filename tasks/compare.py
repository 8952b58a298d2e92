"""The compare step of the improve loop: the old and the new store scored on the same held-out queries.

Two stores on a Modal Volume are scored in the `wikiembed-finetune` app next to them
(`wikiembed.store_location`); only the figures come back.

Touches: both stores' data files (read), the models' files; writes nothing in either store. For
Volume stores, Modal's API only.
"""

from __future__ import annotations

from prefect import task

from wikiembed.results import Comparison
from wikiembed.store_location import locate
from wikiembed.tasks.retry import retry_transient


@task(name="compare", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_transient)
def compare_task(old_store: str, new_store: str, queries: str) -> Comparison:
    """`wikiembed eval --store OLD --against NEW --queries HELDOUT` (float32), without recording it in either card."""
    return locate(old_store).compare(new_store, queries).comparison()
