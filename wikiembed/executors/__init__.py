"""Where a run's shards are embedded: one interface (`base.Executor`), one module per executor.

The flows (`wikiembed.flows.embed_dataset`) know only the interface: they plan a generation,
calibrate it, hand each shard to the executor inside one embed task (the same retries,
markers and UI reports for every executor), read the shard states and export. Which
executor runs is `RunSettings.backend`:

| backend | executor | where a shard runs |
| --- | --- | --- |
| `local` | `in_process.InProcess` | threads of the flow's process, the PyTorch engine |
| `tei` | `worker_processes.WorkerProcesses` | worker processes of the flow's machine, TEI servers by URL |
| `modal` | `modal_containers.ModalContainers` | Modal GPU containers next to a store on a Modal Volume |

Another executor (a Ray cluster, a second cloud) is one new module with an `Executor` subclass,
made known by `register("name", Class)` or, from another package, by an entry point in the
`wikiembed.executors` group (`name = "package.module:Class"`); then `--backend name` runs it, the
run form of the Prefect UI lists it (its choices are read when a deployment's form is built), and
`wikiembed estimate` prices it from its class's facts (`base.Executor`).

This module imports no other module of the project, not even for types (`RunSettings` validates
`--backend` against `names()`, and the executors' modules import the settings): its classes are
`base.Executor` subclasses.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

# The built-in executors, imported only when a run picks one or asks for its facts.
BUILTIN: dict[str, str] = {
    "local": "wikiembed.executors.in_process:InProcess",
    "tei": "wikiembed.executors.worker_processes:WorkerProcesses",
    "modal": "wikiembed.executors.modal_containers:ModalContainers",
}
ENTRY_POINT_GROUP = "wikiembed.executors"
_REGISTERED: dict[str, "type | str"] = {}


def register(name: str, executor: "type | str") -> None:
    """Make `--backend name` run `executor` (a class, or `module:Class` imported when first used)."""
    _REGISTERED[name] = executor


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


def _plugins() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every executor a run may name: the built-ins first, then plugins and registered ones."""
    return list(dict.fromkeys([*BUILTIN, *_plugins(), *_REGISTERED]))


def executor_class(name: str) -> Any:
    """The `base.Executor` subclass `--backend name` runs (KeyError: none here)."""
    found = _REGISTERED.get(name) or _plugins().get(name) or BUILTIN.get(name)
    if found is None:
        raise KeyError(name)
    if isinstance(found, str):
        module, _, attr = found.partition(":")
        return getattr(importlib.import_module(module), attr)
    return found


def executor_for(settings: Any) -> Any:
    """The executor a run's settings name (`backend`), holding those settings."""
    return executor_class(settings.backend)(settings)
