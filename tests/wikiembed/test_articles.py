"""The articles table in memory: its sort, its key search and the rows of dropped articles, checked
against plain Python dictionaries on real parquet files."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wikiembed import articles


def _clean(ids: list[str], texts: list[str]) -> pa.Table:
    return pa.table({"id": ids, "url": [f"u/{i}" for i in ids], "title": [f"t{i}" for i in ids], "text": texts})


def _write(path, rows: pa.Table, gen: str, first_row: int = 0, keys=None, group: int = 7) -> None:  # noqa: ANN001
    with articles.writer(path) as out:
        for start in range(0, rows.num_rows, group):  # several row groups, as a real table has
            part = rows.slice(start, group)
            part_keys = None if keys is None else (keys[0][start:start + group], keys[1][start:start + group])
            out.write_table(articles.rows_table(part, gen, first_row + start, part_keys))


def test_two_layers_less_their_dropped_ids_are_found_and_their_rows_read_back_in_any_order(tmp_path):
    rng = random.Random(3)
    ids_a = [f"a{i}" for i in range(60)]
    ids_b = [f"b{i}" for i in range(45)]
    _write(tmp_path / "a.parquet", _clean(ids_a, [f"x{i}" for i in range(60)]), "g1")
    # The second layer's table also holds rows of another generation (an older format): not its own, not live.
    b = pa.concat_tables([
        articles.rows_table(_clean(ids_b, [f"y{i}" for i in range(45)]), "g2", 0),
        articles.rows_table(_clean(["stale"], ["s"]), "g0", 0),
    ])
    pq.write_table(b, tmp_path / "b.parquet", row_group_size=10)
    gone = pa.table({"gen": ["g1", "g1", "g2"], "id": ["a3", "a40", "b7"]})

    live = articles.Articles.of([("g1", tmp_path / "a.parquet"), ("g2", tmp_path / "b.parquet")], gone)

    expected = [i for i in ids_a if i not in {"a3", "a40"}] + [i for i in ids_b if i != "b7"]
    assert len(live) == len(expected)
    assert live.id_key.tolist() == sorted(live.id_key.tolist())
    # `find` gives each live id's sorted position, and `rows` at its order number gives that id back.
    probe = [*expected, "stale", "a3", "nothing"]
    pos, found = live.find(np.array([articles.id_key(i) for i in probe], dtype="S16"))
    assert found.tolist() == [True] * len(expected) + [False] * 3
    positions = live.order[pos[: len(expected)]]
    shuffled = list(range(len(expected)))
    rng.shuffle(shuffled)
    back = live.rows(positions[shuffled])
    assert back.column("id").to_pylist() == [expected[k] for k in shuffled]
    gens = {i: ("g1" if i.startswith("a") else "g2") for i in expected}
    assert back.column("gen").to_pylist() == [gens[expected[k]] for k in shuffled]
    assert back.schema.field("gen").type == pa.string()
    rows_of = {i: n for n, i in enumerate(ids_a)} | {i: n for n, i in enumerate(ids_b)}
    assert back.column("row").to_pylist() == [rows_of[expected[k]] for k in shuffled]
    assert live.rows(np.zeros(0, dtype=np.int64)).num_rows == 0


def test_keys_that_share_their_first_eight_bytes_are_still_told_apart(tmp_path):
    # Three ids whose digests share their first 8 bytes (made so here; by chance about one pair in 10^9
    # articles): the integer search lands on the first of them, the whole key decides.
    ids = ["p", "q", "r", "s"]
    head = b"\x11" * 8
    id_keys = np.array([head + b"\x03" * 8, head + b"\x01" * 8, b"\x00" * 16, head + b"\x02" * 8], dtype="S16")
    contents = np.array([bytes([i]) * 16 for i in range(1, 5)], dtype="S16")
    _write(tmp_path / "t.parquet", _clean(ids, ["1", "2", "3", "4"]), "g1", keys=(id_keys, contents), group=2)
    live = articles.Articles.of([("g1", tmp_path / "t.parquet")])

    pos, found = live.find(id_keys[[3, 0, 1, 2]])
    assert found.all()
    assert live.rows(live.order[pos]).column("id").to_pylist() == ["s", "p", "q", "r"]
    missing = np.array([head + b"\x09" * 8, head], dtype="S16")
    assert not live.find(missing)[1].any()

    # A new version: "q" edited, "s" unchanged, "p" removed, "r" unchanged, "new" added.
    diff = articles.Diff(live)
    new_ids = np.array([id_keys[1], id_keys[3], id_keys[2], head + b"\x07" * 8], dtype="S16")
    new_contents = np.array([b"\x09" * 16, contents[3], contents[2], b"\x05" * 16], dtype="S16")
    assert diff.select(new_ids, new_contents).tolist() == [True, False, False, True]
    assert diff.finish() == {"added": 1, "edited": 1, "removed": 1}
    assert sorted(live.rows(diff.dropped_rows()).column("id").to_pylist()) == ["p", "q"]


def test_a_diff_of_random_edits_matches_a_dictionary_of_the_two_versions(tmp_path):
    rng = random.Random(11)
    old = {f"id{i}": f"text {i}" for i in range(500)}
    _write(tmp_path / "old.parquet", _clean(list(old), list(old.values())), "g1", group=64)
    new = dict(old)
    for key in rng.sample(sorted(old), 40):
        new[key] += " edited"
    for key in rng.sample(sorted(old), 25):
        del new[key]
    for i in range(30):
        new[f"new{i}"] = f"fresh {i}"
    order = list(new)
    rng.shuffle(order)

    diff = articles.Diff(articles.Articles.of([("g1", tmp_path / "old.parquet")]))
    own = []
    for start in range(0, len(order), 97):  # the new version streamed in batches
        batch = _clean(order[start:start + 97], [new[i] for i in order[start:start + 97]])
        own.extend(diff.select(*articles.table_keys(batch)).tolist())
    counts = diff.finish()

    assert [i for i, o in zip(order, own) if o] == [i for i in order if old.get(i) != new[i]]
    edited = sum(1 for i in new if i in old and new[i] != old[i])
    assert counts == {"added": 30, "edited": edited, "removed": sum(1 for i in old if i not in new)}
    assert edited > 20
    dropped = set(diff.old.rows(diff.dropped_rows()).column("id").to_pylist())
    assert dropped == {i for i in old if new.get(i) != old[i]}
