"""Judged queries: a user's own queries with what is relevant to each, read from a file.

The same file feeds `wikiembed eval --queries` and `wikiembed finetune --pairs`: a jsonl or parquet
file with a `query` column and, per row, what answers it:

- `id`: the relevant article (any of its chunks counts);
- `ids`: several relevant articles;
- `id` plus `chunk_index`: one relevant chunk of an article.

A row may say `"relevant": false`: a judgement that the item does *not* answer the query (the search
service records them beside the positive ones). Such rows are checked like the others and never read as
relevant; any other field of a row (a hit's rank, the generation it came from, a time) is ignored.

Rows with the same query text are one query whose relevant items are the union of theirs (a
feedback log with one row per click reads as it is written). A relevant item is a key
`(id, None)` for a whole article or `(id, chunk_index)` for one chunk; `match` keeps the items a
store holds and says how many queries had none.

Touches: the queries file (read) and the store's `id` / `chunk_index` columns (read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wikiembed.errors import InputError

Key = tuple[str, int | None]
FORMAT_HINT = ('each row needs "query" and one of "id" (a relevant article), "ids" (several) or "id" + "chunk_index" '
               '(one chunk), e.g. {"query": "who wrote Hamlet", "id": "12345"}')


@dataclass(frozen=True)
class JudgedQuery:
    """A query and the article or chunk keys that answer it."""

    text: str
    relevant: frozenset[Key]

    @property
    def article_ids(self) -> frozenset[str]:
        return frozenset(i for i, _ in self.relevant)


@dataclass(frozen=True)
class Matched:
    """The queries a store can answer, and what was dropped on the way."""

    queries: list[JudgedQuery]
    read: int  # queries in the file
    unmatched: int  # queries none of whose relevant items are in the store
    missing_items: int  # relevant items (over all queries) not in the store


def _rows(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    """(where, row) for each row of a jsonl or parquet file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        yield from _jsonl_rows(path)
    elif suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{path}: not a readable parquet file ({exc}); it may be cut short (an interrupted copy or "
                             "download): write or copy it again, or give the judged queries as .jsonl.") from None
        if "query" not in table.column_names:
            raise InputError(f"{path}: has columns {', '.join(table.column_names) or '(none)'} but no \"query\"; {FORMAT_HINT} "
                             "(rename the columns to these names).")
        for n, row in enumerate(table.to_pylist()):
            yield f"{path} row {n}", row
    else:
        raise InputError(f"{path}: unknown file type {suffix or '(none)'}; give a .jsonl or .parquet file.")


# Byte-order marks of the encodings a text editor or a Windows tool writes in place of UTF-8.
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _jsonl_rows(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    """Rows of a UTF-8 jsonl file (a leading byte-order mark is allowed, as for sources); other encodings are refused
    naming the fix."""
    with path.open("rb") as fh:
        head = fh.read(4)
    if head.startswith(_UTF16_BOMS):
        raise InputError(f"{path}: is UTF-16 text, not UTF-8; save it as UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8 "
                         f"{path.name} > {path.stem}-utf8{path.suffix}`) and give that file.")
    with path.open(encoding="utf-8-sig") as fh:
        n = 0
        try:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path} line {n}: not JSON ({exc.msg}); write one JSON object per line.") from None
                if not isinstance(row, dict):
                    raise InputError(f"{path} line {n}: not a JSON object; {FORMAT_HINT}.")
                yield f"{path} line {n}", row
        except UnicodeDecodeError as exc:
            raise InputError(f"{path} line {n + 1}: not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} cannot be "
                             "decoded); save the file as UTF-8 (e.g. `iconv -f latin1 -t UTF-8`) and give that file.") from None


def read_queries(path: str | Path) -> list[JudgedQuery]:
    """The judged queries of a file, in first-seen order; rows of the same query are merged."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"queries file {path}: no such file; give a .jsonl or .parquet file ({FORMAT_HINT}).")
    merged: dict[str, set[Key]] = {}
    not_relevant = 0
    for where, row in _rows(path):
        text = row.get("query")
        if "query" not in row:
            raise InputError(f"{where}: no \"query\" (its fields: {', '.join(map(str, row)) or 'none'}); {FORMAT_HINT}.")
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}: no query text; {FORMAT_HINT}.")
        ids = row.get("ids")
        one = row.get("id")
        chunk = row.get("chunk_index")
        keys: set[Key] = set()
        if ids is not None:
            if not isinstance(ids, (list, tuple)):
                raise InputError(f"{where}: \"ids\" must be a list of article ids; {FORMAT_HINT}.")
            keys |= {(str(i), None) for i in ids}
        if one is not None:
            if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 0):
                raise InputError(f"{where}: \"chunk_index\" {chunk!r} is not a chunk number (0, 1, ...).")
            keys.add((str(one), None if chunk is None else int(chunk)))
        if not keys:
            raise InputError(f"{where}: no relevant \"id\" or \"ids\"; {FORMAT_HINT}.")
        relevant = row.get("relevant")
        if relevant is not None and not isinstance(relevant, bool):
            raise InputError(f"{where}: \"relevant\" {relevant!r} is neither true nor false; leave it out for a relevant item.")
        if relevant is False:  # the item does not answer the query: never a positive
            not_relevant += 1
            continue
        merged.setdefault(text.strip(), set()).update(keys)
    if not merged and not_relevant:
        raise InputError(f"queries file {path} holds only rows marked \"relevant\": false ({not_relevant}); "
                         f"nothing in it says what answers a query yet; {FORMAT_HINT}.")
    if not merged:
        raise InputError(f"queries file {path} is empty; {FORMAT_HINT}.")
    return [JudgedQuery(text, frozenset(keys)) for text, keys in merged.items()]


def store_keys(batches: Iterable[Any], wanted: Iterable[Key] | None = None) -> set[Key]:
    """Every article key (id, None) and chunk key (id, chunk_index) of a store's rows, given as record
    batches with those two columns (`StoreVectors.live_batches`).

    `wanted` (e.g. every key some query names): only those of them the store holds, read batch by batch,
    so what is kept grows with the queries, not with the store (every key of a store is ~150 MB a million chunks)."""
    wanted_set = None if wanted is None else set(wanted)
    ids_wanted = None if wanted_set is None else pa.array(sorted({k[0] for k in wanted_set}), type=pa.string())
    keys: set[Key] = set()
    for batch in batches:
        if ids_wanted is not None:
            batch = batch.filter(pc.is_in(batch.column("id"), value_set=ids_wanted))
            if not batch.num_rows:
                continue
        ids = batch.column("id").to_pylist()
        for i, c in zip(ids, batch.column("chunk_index").to_pylist()):
            keys.add((i, int(c)))
        keys.update((i, None) for i in ids)
    return keys if wanted_set is None else keys & wanted_set


def match(queries: Sequence[JudgedQuery], keys: set[Key], where: str) -> Matched:
    """Keep each query's relevant items that `keys` holds; a query left with none is dropped and counted.

    Raises when no query is left: nothing could be measured or learned from the file."""
    kept: list[JudgedQuery] = []
    missing = unmatched = 0
    for q in queries:
        present = frozenset(k for k in q.relevant if k in keys)
        missing += len(q.relevant) - len(present)
        if present:
            kept.append(JudgedQuery(q.text, present))
        else:
            unmatched += 1
    if not kept:
        example = next(iter(queries[0].relevant))[0] if queries else "?"
        raise InputError(
            f"none of the {len(queries)} queries has a relevant article in {where} (e.g. id {example!r} is not there); "
            "the ids must be the store's article ids (its `id` column), from the same source."
        )
    return Matched(kept, read=len(queries), unmatched=unmatched, missing_items=missing)


def split_holdout(queries: Sequence[JudgedQuery], fraction: float, seed: int) -> tuple[list[JudgedQuery], list[JudgedQuery]]:
    """(train, held out): a seeded draw of `fraction` of the queries, by query text, so the same file,
    fraction and seed hold out the same queries on any machine and in any order."""
    if not 0 < fraction < 1:
        raise InputError(f"--holdout {fraction}: hold out a fraction between 0 and 1 (0.2 keeps a fifth for the verdict).")
    order = sorted(range(len(queries)), key=lambda i: queries[i].text)
    size = int(round(fraction * len(queries)))
    if size < 1:
        raise InputError(
            f"--holdout {fraction} of {len(queries)} queries holds out none, so nothing could judge the fine-tune; "
            "give more queries or a larger --holdout."
        )
    if size >= len(queries):
        raise InputError(f"--holdout {fraction} of {len(queries)} queries leaves none to train on; give more queries.")
    picked = set(np.random.default_rng(seed).choice(len(order), size=size, replace=False).tolist())
    held = [queries[order[i]] for i in sorted(picked)]
    train = [queries[order[i]] for i in range(len(order)) if i not in picked]
    return train, held
