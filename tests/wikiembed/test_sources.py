"""The download step on real files: sources, fingerprints, row-by-row cleaning, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wikiembed.sources import (
    SNAPSHOT_ROW_GROUP,
    fingerprint,
    parse_source,
    pin,
    read_snapshot_rows,
    write_snapshot,
)
from wikiembed.errors import InputError
from wikiembed.sample import generate_articles, sample_article


def test_sample_is_deterministic_and_prefix_stable():
    a = list(generate_articles(50))
    b = list(generate_articles(80))
    assert a == b[:50]
    assert sample_article(7) == a[7]
    assert all(set(x) == {"id", "url", "title", "text"} and all(isinstance(v, str) for v in x.values()) for x in a)
    assert len({x["id"] for x in b}) == 80


def test_sample_length_distribution_is_wikipedia_shaped():
    lengths = [len(a["text"]) for a in generate_articles(4000)]
    mean = sum(lengths) / len(lengths)
    assert 800 < mean < 1500
    assert sum("\n\n" in a["text"] for a in generate_articles(200)) > 50  # paragraphs
    assert any(any(ord(c) > 127 for c in a["text"]) for a in generate_articles(200))  # some unicode
    # the heavy tail: about one article in 2,000 is past 100k characters
    assert any(len(sample_article(i)["text"]) > 100_000 for i in range(20_000))


def test_sample_has_wikipedias_token_density():
    # Real English Wikipedia: ~121 tokens (BERT uncased, special tokens included) per full
    # 512-character window; tokenizer-bound speeds measured on the sample depend on it.
    from wikiembed.model import load_tokenizer

    windows = []
    for article in generate_articles(1500):
        text = article["text"]
        windows += [text[i : i + 512] for i in range(0, len(text) - 511, 512)]
    counts = [len(e.ids) for e in load_tokenizer().encode_batch(windows[:2000])]
    assert len(counts) == 2000
    assert 111 <= sum(counts) / len(counts) <= 131


def test_parse_source_kinds_and_errors(tmp_path: Path):
    assert parse_source("sample:10").kind == "sample"
    with pytest.raises(InputError, match="sample:N"):
        parse_source("sample:zero")
    with pytest.raises(InputError, match="no such file"):
        parse_source(str(tmp_path / "missing.parquet"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="unsupported file type"):
        parse_source(str(tmp_path / "x.csv"))
    assert parse_source("wikimedia/wikipedia", config="20231101.simple").kind == "hub"


def test_hub_source_offline_names_the_fix():
    source = parse_source("wikimedia/wikipedia", config="20231101.simple")
    with pytest.raises(InputError) as err:
        pin(source)
    assert "HF_HUB_OFFLINE" in str(err.value) and "sample:N" in str(err.value)


def _rows(n: int) -> list[dict]:
    return [{"id": str(i), "url": f"u{i}", "title": f"t{i}", "text": f"article {i} " * 5} for i in range(n)]


def test_parquet_roundtrip_and_row_ranges(tmp_path: Path):
    src = tmp_path / "src.parquet"
    pq.write_table(pa.Table.from_pylist(_rows(2500)), src)
    source = parse_source(str(src))
    dest = tmp_path / "snap.parquet"
    report = write_snapshot(source, dest)
    assert report.rows == 2500 and not report.skipped
    assert pq.ParquetFile(dest).metadata.num_rows == 2500
    assert pq.ParquetFile(dest).metadata.row_group(0).num_rows == SNAPSHOT_ROW_GROUP
    part = read_snapshot_rows(dest, 990, 2010)
    assert part.column("id").to_pylist() == [str(i) for i in range(990, 2010)]
    # same bytes -> same fingerprint; changed bytes -> new fingerprint
    fp = fingerprint(source)
    assert fp == fingerprint(parse_source(str(src)))
    pq.write_table(pa.Table.from_pylist(_rows(2501)), src)
    assert fingerprint(parse_source(str(src))) != fp


def test_missing_required_column_is_a_clear_error(tmp_path: Path):
    src = tmp_path / "src.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "1", "body": "x"}]), src)
    with pytest.raises(InputError, match="--columns"):
        write_snapshot(parse_source(str(src)), tmp_path / "snap.parquet")
    report = write_snapshot(parse_source(str(src), columns="text=body"), tmp_path / "snap.parquet")
    assert report.rows == 1


def test_hostile_jsonl_rows_are_skipped_or_repaired(tmp_path: Path):
    big = "word " * 2_100_000  # ~10 MB article: kept
    lines = [
        json.dumps({"id": "1", "url": "u", "title": "ok", "text": "good row"}).encode(),
        b'{"id": "2", "text": "broken',  # broken JSON line
        json.dumps({"id": "3", "text": None}).encode(),  # null text
        json.dumps({"id": "4", "text": "   \n\t "}).encode(),  # blank text
        json.dumps({"id": "5", "text": 12345}).encode(),  # wrong type
        json.dumps({"id": "1", "text": "duplicate id"}).encode(),  # duplicate id
        json.dumps({"id": 6, "text": "numeric id"}).encode(),  # id repaired to string
        b'{"id": "7", "text": "bad \xff\xfe utf8"}',  # invalid UTF-8: repaired
        json.dumps({"id": "8", "text": "nul\u0000byte"}).encode(),  # NUL removed
        json.dumps({"id": "9", "text": "\u200f\u05e9\u05dc\u05d5\u05dd e\u0301 🙂"}).encode(),  # RTL, combining, emoji kept
        json.dumps({"id": "10", "text": big}).encode(),
        json.dumps({"id": "11", "text": "no url or title"}).encode(),  # optional columns filled
        b"[1, 2, 3]",  # not an object
    ]
    src = tmp_path / "src.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    dest = tmp_path / "snap.parquet"
    report = write_snapshot(parse_source(str(src)), dest)
    table = pq.read_table(dest)
    ids = table.column("id").to_pylist()
    assert ids == ["1", "6", "7", "8", "9", "10", "11"]
    texts = dict(zip(ids, table.column("text").to_pylist()))
    assert texts["1"] == "good row"
    assert "\ufffd" in texts["7"]
    assert texts["8"] == "nulbyte"
    assert texts["9"] == "\u200f\u05e9\u05dc\u05d5\u05dd e\u0301 🙂"
    assert len(texts["10"]) == len(big)
    assert report.skipped == {
        "broken JSON line": 1,
        "null text": 1,
        "blank text": 1,
        "text is not a string": 1,
        "duplicate id (first occurrence kept)": 1,
        "JSON line is not an object": 1,
    }
    assert report.repaired["id converted to string"] == 1
    assert report.repaired["invalid UTF-8 replaced with U+FFFD"] == 1
    assert report.repaired["NUL bytes removed"] == 1
    assert report.repaired["missing url set to empty"] >= 1


def test_save_to_disk_folder(tmp_path: Path):
    import datasets

    ds = datasets.Dataset.from_list(_rows(30))
    ds.save_to_disk(str(tmp_path / "ds"))
    source = parse_source(str(tmp_path / "ds"))
    assert source.kind == "disk"
    report = write_snapshot(source, tmp_path / "snap.parquet")
    assert report.rows == 30


def test_limit_reads_only_first_rows(tmp_path: Path):
    report = write_snapshot(parse_source("sample:100", limit=25), tmp_path / "snap.parquet")
    assert report.rows == 25


def test_unreadable_file_names_the_file(tmp_path: Path):
    src = tmp_path / "bad.parquet"
    src.write_bytes(b"this is not parquet")
    with pytest.raises(InputError, match="bad.parquet"):
        write_snapshot(parse_source(str(src)), tmp_path / "snap.parquet")


def test_a_lone_surrogate_becomes_the_replacement_character(tmp_path: Path):
    src = tmp_path / "src.jsonl"
    src.write_text('{"id": "1", "title": "t\\ud800", "text": "before \\udc00 after"}\n', encoding="utf-8")
    report = write_snapshot(parse_source(str(src)), tmp_path / "snap.parquet")
    row = pq.read_table(tmp_path / "snap.parquet").to_pylist()[0]
    assert row["text"] == "before \ufffd after" and row["title"] == "t\ufffd"
    assert report.repaired["invalid UTF-8 replaced with U+FFFD"] == 2


def test_a_folder_mixing_parquet_and_jsonl_is_refused_by_name(tmp_path: Path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([{"id": "1", "text": "from parquet"}]), folder / "a.parquet")
    (folder / "b.jsonl").write_text(json.dumps({"id": "2", "text": "from jsonl"}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"a\.parquet.*b\.jsonl"):
        parse_source(str(folder))
    # a JSON metadata file beside parquet files is not data: the folder reads as parquet
    (folder / "b.jsonl").unlink()
    (folder / "dataset_infos.json").write_text("{}", encoding="utf-8")
    assert parse_source(str(folder)).kind == "parquet"


def _jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def test_a_utf8_byte_order_mark_does_not_cost_the_first_article(tmp_path: Path):
    src = tmp_path / "bom.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + _jsonl_bytes(_rows(3)))
    report = write_snapshot(parse_source(str(src)), tmp_path / "snap.parquet")
    assert pq.read_table(tmp_path / "snap.parquet").column("id").to_pylist() == [r["id"] for r in _rows(3)]
    assert report.rows == 3 and not report.skipped


@pytest.mark.parametrize("encoding, named", [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"), ("utf-16-be", "UTF-16"),
                                             ("utf-32", "UTF-32"), ("utf-32-le", "UTF-32")])
def test_a_utf16_or_utf32_file_is_refused_naming_its_encoding(tmp_path: Path, encoding: str, named: str):
    src = tmp_path / "wide.jsonl"
    src.write_bytes(_jsonl_bytes(_rows(3)).decode("utf-8").encode(encoding))
    dest = tmp_path / "snap.parquet"
    with pytest.raises(InputError, match=rf"wide\.jsonl.*{named}-encoded.*must be UTF-8.*iconv -f {named} -t UTF-8"):
        write_snapshot(parse_source(str(src)), dest)
    assert not dest.exists()


def test_compressed_json_lines_are_read_alone_and_in_a_folder(tmp_path: Path):
    import bz2
    import gzip
    import lzma

    rows = _rows(40)
    single = tmp_path / "one.jsonl.gz"
    single.write_bytes(gzip.compress(_jsonl_bytes(rows[:10])))
    assert parse_source(str(single)).kind == "jsonl"
    assert write_snapshot(parse_source(str(single)), tmp_path / "a.parquet").rows == 10

    folder = tmp_path / "dump"
    folder.mkdir()
    (folder / "part-0.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes(rows[:10])))
    (folder / "part-1.jsonl.bz2").write_bytes(bz2.compress(_jsonl_bytes(rows[10:20])))
    (folder / "part-2.ndjson.xz").write_bytes(lzma.compress(_jsonl_bytes(rows[20:30])))
    (folder / "part-3.jsonl").write_bytes(_jsonl_bytes(rows[30:]))
    report = write_snapshot(parse_source(str(folder)), tmp_path / "b.parquet")
    assert report.rows == 40
    assert sorted(pq.read_table(tmp_path / "b.parquet").column("id").to_pylist()) == sorted(r["id"] for r in rows)


def test_a_folder_mixing_parquet_and_compressed_json_lines_is_refused_by_name(tmp_path: Path):
    import gzip

    folder = tmp_path / "mixed"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(_rows(30)[:15]), folder / "a.parquet")
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes(_rows(30)[15:])))
    with pytest.raises(InputError, match=r"mixes parquet files \(a\.parquet\) and JSON Lines files \(b\.jsonl\.gz\)"):
        parse_source(str(folder))


def test_json_lines_in_an_unreadable_compression_are_refused_by_name(tmp_path: Path):
    folder = tmp_path / "zst"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(_rows(5)), folder / "a.parquet")
    (folder / "b.jsonl.zst").write_bytes(b"(\xb5/\xfd not really")
    with pytest.raises(InputError, match=r"compression wikiembed cannot read \(b\.jsonl\.zst\)"):
        parse_source(str(folder))


def test_a_truncated_gzip_file_is_named(tmp_path: Path):
    import gzip

    src = tmp_path / "cut.jsonl.gz"
    src.write_bytes(gzip.compress(_jsonl_bytes(_rows(200)))[:-200])
    with pytest.raises(InputError, match=r"cut\.jsonl\.gz: cannot be read to its end"):
        write_snapshot(parse_source(str(src)), tmp_path / "snap.parquet")


@pytest.mark.parametrize("limit, recent", [(None, None), (9_000, None), (None, 256)])
def test_a_parquet_source_read_in_arrow_gives_the_rows_and_report_of_the_row_by_row_path(tmp_path: Path, monkeypatch, limit, recent):
    """Rows that need nothing stay in Arrow; every other row is checked and repaired as one by one,
    in source order, across tables (duplicates of an earlier table, --limit inside a table; with
    `recent`, duplicates of ids already moved from the set into the sorted array)."""
    from wikiembed import sources

    monkeypatch.setattr(sources, "_ARROW_BATCH", 1000)
    if recent:
        monkeypatch.setattr(sources._SeenIds, "RECENT", recent)
    rows = [dict(r) for r in generate_articles(12_000)]
    odd = {
        3: {"text": "   \n\t "}, 40: {"text": "\u3000\u2003"}, 41: {"text": "\u200b"}, 77: {"text": "a\x00b"},
        90: {"url": None}, 91: {"title": None}, 92: {"title": "x\x00"}, 93: {"text": None},
        120: {"id": "  "}, 121: {"id": "\u2028"}, 122: {"id": None}, 1500: {"id": rows[10]["id"]},
        1999: {"id": rows[1999 - 1]["id"]}, 2000: {"text": "\x1c\x1d"}, 8999: {"text": ""}, 9000: {"url": "u\x00"},
        11_000: {"id": rows[5]["id"]},
    }
    for i, change in odd.items():
        rows[i].update(change)
    table = pa.Table.from_pylist(rows, pa.schema([(c, pa.string()) for c in ("id", "url", "title", "text")]))
    src = tmp_path / "mixed.parquet"
    pq.write_table(table, src, row_group_size=700)
    source = parse_source(str(src), limit=limit)

    by_row = sources.RowReport()
    expected = list(sources.read_source(source, by_row))
    in_arrow = sources.RowReport()
    got = [r for t in sources.read_tables(source, in_arrow) for r in t.to_pylist()]
    assert got == expected
    assert (in_arrow.rows, in_arrow.skipped, in_arrow.repaired, in_arrow.examples) == (
        by_row.rows, by_row.skipped, by_row.repaired, by_row.examples)
    assert by_row.skipped and by_row.repaired  # the odd rows were met
    # the snapshot is the same file either way
    write_snapshot(source, tmp_path / "a.parquet")
    monkeypatch.setattr(sources, "read_tables", lambda s, report: (
        pa.Table.from_pylist(expected[i:i + 500], sources.SNAPSHOT_SCHEMA) for i in range(0, len(expected), 500)))
    write_snapshot(source, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_the_ids_seen_are_found_in_the_set_and_in_the_sorted_array(monkeypatch):
    """`_SeenIds` answers as a set of every id digest added, before and after they are settled."""
    import random

    import numpy as np

    from wikiembed.sources import _SeenIds

    monkeypatch.setattr(_SeenIds, "RECENT", 100)
    rng = random.Random(0)
    digests = [rng.getrandbits(64) for _ in range(3_000)] + [0, 2**64 - 1]
    seen, every = _SeenIds(), set()
    for i, d in enumerate(digests + digests[:500]):
        if i % 50 == 0:
            seen.settle()
        assert (d in seen) == (d in every)
        if d not in every:
            seen.add(d)
            every.add(d)
    assert len(seen.settled) + len(seen.recent) == len(every)
    probe = np.array(digests[:200] + [rng.getrandbits(64) for _ in range(200)], dtype=np.uint64)
    assert seen.settled_mask(probe).tolist() == np.isin(probe, seen.settled).tolist()


def test_a_parquet_source_is_read_holding_about_one_row_group(tmp_path: Path, monkeypatch):
    """Reading a source into its snapshot holds a row group or two of it at a time, not the whole
    file (pyarrow's pre-buffering keeps every row group read until the file object goes)."""
    import random
    import string

    from wikiembed import sources

    monkeypatch.setattr(sources, "_ARROW_BATCH", 100)  # a table a row group

    rng = random.Random(0)
    src = tmp_path / "big.parquet"
    schema = pa.schema([(c, pa.string()) for c in ("id", "url", "title", "text")])
    with pq.ParquetWriter(src, schema, compression="none") as writer:
        for g in range(24):  # 24 row groups of about 1 MB of text each
            text = "".join(rng.choices(string.ascii_letters, k=1_000_000))
            rows = [{"id": f"{g}-{i}", "url": "", "title": "", "text": text[i * 10_000 : (i + 1) * 10_000]} for i in range(100)]
            writer.write_table(pa.Table.from_pylist(rows, schema))
    peak = 0
    for table in sources.read_tables(parse_source(str(src)), sources.RowReport()):
        peak = max(peak, pa.total_allocated_bytes())
        del table
    assert peak < 8_000_000, f"{peak:,} bytes held while reading a 24 MB source"
