"""One path for every executor: a fourth one, written here, runs whole flows through it unchanged.

`ToyExecutor` is what a new executor module would hold (a Ray cluster, a second cloud): it
implements `wikiembed.executors.base.Executor` and is registered under a name; nothing in the
flows knows it. Each shard runs in a thread pool of its own with the local engine, and the
shards named in `fail_once` lose their worker once, so the flow's own retries, markers and
reports are seen to apply to it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from wikiembed import executors, store_ops
from wikiembed.backends.factory import BackendOptions
from wikiembed.calibration import calibrate
from wikiembed.compact import Int8Calibration
from wikiembed.errors import TransientBackendError
from wikiembed.executors.base import Executor, Planned, ShardJob, StoreView
from wikiembed.results import Exported
from wikiembed.store import Store

ENGINE = BackendOptions("local")


class ToyExecutor(Executor):
    """Shards in a thread pool of their own; every call recorded (executors are made per flow run)."""

    name = "toy"
    calls: list[tuple[str, Any]] = []
    fail_once: set[int] = set()

    def store(self, spec: str, gen: str | None = None) -> Store:
        return Store(spec, gen)

    def prepare(self) -> Planned:
        ToyExecutor.calls.append(("prepare", None))
        return store_ops.prepare_store(self.settings)

    def check_backend(self, model: str) -> None:
        ENGINE.open(model)

    def calibrate(self, root: str, gen: str) -> Int8Calibration | None:
        return calibrate(Store(root, gen), ENGINE)

    def run_shard(self, job: ShardJob) -> dict[str, Any]:
        ToyExecutor.calls.append(("run_shard", job.shard))
        if job.shard in ToyExecutor.fail_once:
            ToyExecutor.fail_once.discard(job.shard)
            raise TransientBackendError(f"toy: the worker of shard {job.shard} went away")
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(store_ops.run_shard, job.root, job.gen, job.shard, ENGINE, chunk_workers=1).result()

    def prepare_rerun(self, store: StoreView, manifest: dict[str, Any], shards: list[int]) -> str | None:
        ToyExecutor.calls.append(("prepare_rerun", tuple(shards)))
        return None

    def export(self, root: str, gen: str, upload_to: str | None) -> Exported:
        ToyExecutor.calls.append(("export", gen))
        return store_ops.export_store(root, gen, upload_to)


@pytest.fixture
def toy():
    executors.register("toy", ToyExecutor)
    ToyExecutor.calls.clear()
    yield ToyExecutor
    executors.unregister("toy")
    ToyExecutor.fail_once.clear()


def _vectors(store: Path) -> np.ndarray:
    table = pq.read_table(store / "data").sort_by([("id", "ascending"), ("chunk_index", "ascending")])
    return np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


def test_a_fourth_executor_runs_the_whole_flow_through_the_same_path(prefect_api, tmp_path: Path, toy) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from wikiembed.flows.embed_dataset import embed_dataset, rerun_shards

    toy.fail_once = {1}
    store = tmp_path / "toy"
    state = embed_dataset(source="sample:60", store=str(store), shard_rows=20, backend="toy", return_state=True)
    summary = state.result()
    assert summary["backend"] == "toy" and summary["shards_done"] == summary["shards_total"] == 3
    # Shard 1 lost its worker once and the flow's embed task retried it: counted like any retry.
    runs = [k for what, k in toy.calls if what == "run_shard"]
    assert sorted(runs) == [0, 1, 1, 2] and summary["retries"] == 1
    assert toy.calls[0] == ("prepare", None) and toy.calls[-1][0] == "export"
    assert Store(store).pointer("current") == summary["generation"]  # exported: published

    # The same task runs a local run has, in Prefect: one embed task per shard, its retry recorded.
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    by_name = {t.name: t for t in task_runs}
    assert {"embed-00000", "embed-00001", "embed-00002"} <= set(by_name)
    assert by_name["embed-00001"].run_count == 2 and all(by_name[f"embed-{k:05d}"].state.is_completed() for k in range(3))

    # Its vectors are the local executor's, chunk for chunk.
    local = tmp_path / "local"
    embed_dataset(source="sample:60", store=str(local), shard_rows=20)
    assert np.abs(_vectors(store) - _vectors(local)).max() < 1e-5

    # A resumed run sends nothing; a rerun takes the executor the store was made with.
    toy.calls.clear()
    again = embed_dataset(source="sample:60", store=str(store), shard_rows=20, backend="toy")
    assert again["shards_done"] == 3 and not [c for c in toy.calls if c[0] == "run_shard"]
    toy.calls.clear()
    redone = rerun_shards(store=str(store), shards=[2])
    assert redone["rerun_done"] == [2] and toy.calls[:2] == [("prepare_rerun", (2,)), ("run_shard", 2)]


def test_an_unknown_executor_is_refused_naming_the_known_ones(prefect_api, tmp_path: Path) -> None:
    from wikiembed.flows.embed_dataset import embed_dataset

    with pytest.raises(Exception, match="backend 'ray' is not an executor here: use one of local, tei, modal"):
        embed_dataset(source="sample:10", store=str(tmp_path / "s"), backend="ray")
    assert not (tmp_path / "s").exists()


def test_the_registry_lists_the_builtins_first() -> None:
    assert executors.names()[:3] == ["local", "tei", "modal"]
    assert executors.executor_class("tei").__name__ == "WorkerProcesses"
    with pytest.raises(KeyError):
        executors.executor_class("ray")
