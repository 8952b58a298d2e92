"""What a reader of a generation is handed: each planned shard's state and each data file of its rows.

`wikiembed.store.Store.states` gives a `ShardState` per planned shard (done, failed, pending, or changed
since it was marked done); `Store.parts` a `Part` per data file the generation's rows are in: its own
done shards, and the files of earlier generations it keeps, less the rows of the articles dropped since.
Publishing, the card, the index and the status read these.

Touches: nothing (records only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wikiembed.records import Marker


@dataclass(frozen=True)
class ShardState:
    """One planned shard as the store records it."""

    shard: int
    state: str  # done | failed | pending | changed (a marker whose data file no longer matches it)
    rows: int
    chunks: int | None
    error: str | None = None
    attempts: int = 0
    marker: Marker | None = None  # the `_done` marker, when done


@dataclass(frozen=True)
class Part:
    """One data file of a generation as a reader takes it: one of its own done shards, or a shard file
    of an earlier generation it keeps (`Manifest.base`), less the rows of the articles in `drop`."""

    gen: str
    shard: int
    path: Path
    sha256: str
    bytes: int
    rows: int  # articles in the file
    chunks: int  # rows in the file
    arrow_bytes: int | None = None
    drop: Any = None  # pyarrow string array of article ids whose rows are not the generation's, or None
    dropped_rows: int = 0
    dropped_chunks: int = 0

    @property
    def live_chunks(self) -> int:
        return self.chunks - self.dropped_chunks

    def live(self, ids: Any) -> Any:
        """A boolean mask over the `id` column values `ids` of this file: the rows the generation holds
        (None: every row)."""
        if self.drop is None or not len(self.drop):
            return None
        import pyarrow.compute as pc

        return pc.invert(pc.is_in(ids, value_set=self.drop))
