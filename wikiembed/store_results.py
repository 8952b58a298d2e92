"""What the store's own steps answer (`wikiembed.store_ops`), wherever they run: typed records.

The same functions run in the flow's process for a local store and in a `StoreOps` container at a
Modal Volume (`modal_workers/store_app.py`). In the flow's process they hand the records on as they
are; a container returns each one's `to_json()` (a plain dict is what crosses Modal's wire, and what
an app deployed from an older version still sends), and `wikiembed.volume_store.VolumeStore` reads
it back with `from_json()`. The records follow `wikiembed.results`' conventions; what publishing
returns (`Published`, `Exported`) is there, with the other results the CLI prints.

Touches: nothing (records only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wikiembed.results import JsonRecord, ShardStatus


@dataclass(frozen=True)
class Planned(JsonRecord):
    """The download step's answer (`store_ops.prepare_store`): the generation to fill, the published one it may
    reuse vectors from, and the articles added, edited and removed between them."""

    store: str
    gen: str
    previous_gen: str | None = None
    changes: dict[str, int] | None = None


@dataclass(frozen=True)
class GenerationView(JsonRecord):
    """What the flow and `status` read of a generation where its store is (`store_ops.view_store`): the generation,
    the manifest's control fields, each shard's state (without its marker) and the `current` / `next` pointers."""

    gen: str
    manifest: dict[str, Any]  # the manifest's JSON, its fields `store_ops.MANIFEST_VIEW` only: read as a `Manifest`
    states: tuple[ShardStatus, ...]
    pointers: dict[str, str | None] = field(default_factory=dict)  # an app deployed before pointers sends none
