"""The calibrate step: fix a generation's int8 ranges before any shard is embedded.

See `wikiembed.calibration` for why and how. For a local store the step runs here with the
run's backend; for a store on a Modal Volume it runs in a shard container at the Volume, with
the deployed class's backend (`ModalShards.calibrate`), so the snapshot never leaves the cloud.

Touches: through `wikiembed.calibration`, the generation's snapshot and manifest, the backend.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from wikiembed.backends.modal_client import ModalShards
from wikiembed.calibration import calibrate
from wikiembed.store import Store
from wikiembed.tasks.retry import retry_transient
from wikiembed.volume_store import mount_path

_RETRIES = {"retries": 2, "retry_delay_seconds": [5, 30], "retry_condition_fn": retry_transient}


@task(name="calibrate", **_RETRIES)
def calibrate_task(store: str, gen: str, backend_opts: dict[str, Any]) -> dict[str, Any] | None:
    """Record the generation's int8 ranges in its manifest if it stores int8 and has none yet."""
    return calibrate(Store(store, gen), backend_opts)


@task(name="calibrate", **_RETRIES)
def calibrate_remote_task(store: str, gen: str, model_id: str, backend_opts: dict[str, Any]) -> dict[str, Any] | None:
    """The same for a store on a Modal Volume (`modal:VOLUME/PATH`), in one of its shard containers."""
    shards = ModalShards(backend_opts["modal_app"], backend_opts["modal_class"], model_id=model_id, gpu=backend_opts["gpu"])
    return shards.calibrate(mount_path(store), gen)
