"""`wikiembed estimate` on real text (Python's reference topics): exact counts when the sample is
the whole source, intervals that hold the truth when it is not, and rates/prices with provenance."""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

import pyarrow as pa
import pytest

from tests.corpus import python_topics
from wikiembed.chunking import chunk_table, make_chunking
from wikiembed.errors import InputError
from wikiembed.estimate import estimate
from wikiembed.flows.cli import main
from wikiembed.model import load_tokenizer, model_info
from wikiembed.rates import prices, rates
from wikiembed.sources import SNAPSHOT_SCHEMA

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    return python_topics(tmp_path_factory.mktemp("topics") / "topics.jsonl")


@pytest.fixture(scope="module")
def truth(topics):
    """Chunks and tokens of the whole corpus, counted directly."""
    rows = [json.loads(line) for line in topics.read_text().splitlines()]
    info = model_info()
    tokenizer = load_tokenizer()
    chunks = chunk_table(pa.Table.from_pylist(rows, SNAPSHOT_SCHEMA), make_chunking("tokens", None, 0, info.max_tokens), tokenizer)
    tokens = sum(min(len(e.ids), info.max_tokens) for e in tokenizer.encode_batch(chunks.column("text").to_pylist()))
    return {"articles": len(rows), "chars": sum(len(r["text"]) for r in rows), "chunks": chunks.num_rows, "tokens": tokens}


def test_whole_source_sample_gives_exact_counts(topics, truth):
    result = estimate(str(topics), sample=1000)
    assert result.articles == truth["articles"] and result.chars == truth["chars"] and result.chars_exact
    assert result.chunks == truth["chunks"] and result.chunks_ci95 == (truth["chunks"],) * 2
    assert result.tokens == truth["tokens"] and result.tokens_ci95 == (truth["tokens"],) * 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_intervals_hold_the_true_totals(topics, truth, seed):
    result = estimate(str(topics), sample=30, seed=seed)
    assert result.sample.articles == 30 and result.chars == truth["chars"]
    for key, value, (lo, hi) in (("chunks", result.chunks, result.chunks_ci95), ("tokens", result.tokens, result.tokens_ci95)):
        assert lo <= truth[key] <= hi and lo < hi, (key, lo, truth[key], hi)
        assert abs(value - truth[key]) / truth[key] < 0.15


def test_options_come_from_the_rate_and_price_files(topics):
    result = estimate(str(topics), sample=20, backends=["local", "modal"], gpus=["CPU", "A10G", "H100"], containers=4)
    by = {(o.backend, o.gpu): o for o in result.options}
    cpu = by[("local", "CPU")]
    assert cpu.basis == "measured" and cpu.rate_how.startswith("python bench/engine.py")
    assert cpu.gpu_hours == pytest.approx(result.chars / cpu.rate_chars_per_s / 3600, rel=1e-3)
    assert cpu.wall_minutes == pytest.approx(cpu.gpu_hours * 60 / 4, rel=1e-2) and cpu.usd is None
    a10g = by[("modal", "A10G")]
    assert a10g.basis == "published" and "BAAI/bge-small-en-v1.5" in a10g.note
    h100 = by[("modal", "H100")]  # a price but no throughput recorded: nothing is made up
    assert h100.basis == "no rate" and h100.gpu_hours is None and h100.usd is None
    assert {("local", "H100"), ("modal", "CPU")} <= set(by)


def test_every_rate_and_price_says_where_it_comes_from():
    for rate in rates():
        assert rate.kind in ("measured", "published") and rate.chars_per_s > 0 and rate.date
        if rate.kind == "measured":
            assert rate.command and (ROOT / rate.results).exists()
        else:
            assert rate.source.startswith("https://")
    for price in prices():
        assert price.usd_per_hour > 0 and price.as_of and price.source.startswith("https://")
    assert tomllib.loads((ROOT / "wikiembed/data/rates.toml").read_text())  # plain TOML, editable by hand


def test_a_rate_or_price_record_is_its_row_of_the_data_file():
    """Every key a row may hold is a field of its record: `to_json()` gives the row back as the file holds it."""
    from wikiembed.rates import Price, Rate

    for name, record in (("rates.toml", Rate), ("prices.toml", Price)):
        rows = next(iter(tomllib.loads((ROOT / "wikiembed/data" / name).read_text()).values()))
        assert rows and all(record.from_json(row).to_json() == row for row in rows), name


def test_cli_writes_the_json_contract(topics, tmp_path, capsys):
    out = tmp_path / "estimate.json"
    assert main(["estimate", "--source", str(topics), "--sample", "20", "--backend", "local", "--gpu", "cpu",
                 "--containers", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"chars", "chunks", "tokens", "options"} <= set(result)
    assert set(result["options"][0]) >= {"backend", "gpu", "containers", "gpu_hours", "wall_minutes", "usd"}
    assert " CPU-h, " in capsys.readouterr().out and result["options"][0]["unit"] == "CPU-hours"
    # The file reads back into the record it was written from, key for key.
    from wikiembed.estimate import Estimate

    assert Estimate.from_json(result).to_json() == result
    assert json.dumps(Estimate.from_json(result).to_json(), indent=1) == out.read_text()


def test_cpu_hours_are_not_called_gpu_hours(topics):
    from wikiembed.estimate import markdown

    result = estimate(str(topics), sample=20, backends=["local", "modal"], gpus=["CPU", "A10G"])
    by = {(o.backend, o.gpu): o for o in result.options}
    assert by[("local", "CPU")].unit == "CPU-hours" and by[("modal", "A10G")].unit == "GPU-hours"
    text = markdown(result)
    assert "- local on CPU: " in text and "CPU-hours" in text.split("- local on CPU: ")[1].splitlines()[0]
    assert "GPU-hours" not in text.split("- local on CPU: ")[1].splitlines()[0]


def test_containers_are_named_only_where_a_run_starts_them(topics):
    """Modal starts containers; a local or TEI rate is of a machine that is already running."""
    from wikiembed.estimate import compare

    result = estimate(str(topics), sample=20, backends=["local", "modal"], gpus=["CPU", "A10G"])
    by = {(o.backend, o.gpu): o for o in result.options}
    assert "container" not in by[("local", "CPU")].note
    assert "container start-up and idle time not included" in by[("modal", "A10G")].note
    local = compare(result.replace(options=(by[("local", "CPU")],)), result.chunks, 7.0).seconds
    assert local.basis == "measured rate for local on CPU"
    modal = compare(result.replace(options=(by[("modal", "A10G")],)), result.chunks, 7.0).seconds
    assert modal.basis == "published rate for modal on A10G, one container"


def test_cli_takes_the_runs_own_source_and_chunking_flags(topics, tmp_path, capsys):
    from wikiembed.flows.cli import ESTIMATE_OPTIONS, _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    flags = {name: {a.dest: (a.help, a.choices, a.type) for a in sub[name]._actions} for name in ("run", "estimate")}
    assert all(flags["estimate"][name] == flags["run"][name] for name in ESTIMATE_OPTIONS)
    # Validated as run validates them.
    assert main(["estimate", "--source", str(topics), "--chunk-overlap", "-1"]) == 2
    assert "--chunk-overlap: Input should be greater than or equal to 0" in capsys.readouterr().err
    # And applied: 200-character windows make more chunks than the default token windows.
    out = tmp_path / "chars.json"
    assert main(["estimate", "--source", str(topics), "--limit", "10", "--chunker", "chars", "--chunk-size", "200",
                 "--gpu", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["articles"] == 10 and result["chunking"] == {"chunker": "chars", "chunk_size": 200, "chunk_overlap": 0}
    assert result["chunks"] >= result["chars"] / 200


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"gpus": ["V100"]}, "--gpu V100"),
        ({"backends": ["cloud"]}, "--backend cloud"),
        ({"sample": 1}, "--sample 1"),
        ({"containers": 0}, "--containers 0"),
        ({"chunk_size": 4096}, "--chunk-size 4096"),
    ],
)
def test_bad_options_name_the_flag(topics, kwargs, needle):
    with pytest.raises(InputError, match=needle.replace("-", r"\-")):
        estimate(str(topics), **kwargs)


def test_missing_source_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        estimate(str(tmp_path / "missing.parquet"))


def test_every_gpu_the_modal_apps_take_has_a_dated_price():
    from datetime import date

    from modal_workers.tei_app import _ARCH_TAGS
    from wikiembed.rates import GPUS, pick_price

    for gpu in sorted(set(_ARCH_TAGS) | (set(GPUS) - {"CPU"})):
        price = pick_price("modal", gpu)
        assert price is not None, gpu
        assert price.usd_per_hour > 0 and date.fromisoformat(price.as_of) and price.source.startswith("https://")
    assert pick_price("modal", "A10").usd_per_hour == pick_price("modal", "A10G").usd_per_hour
    assert pick_price("modal", "A100").hardware == "A100-40GB"


def test_a_price_older_than_90_days_is_flagged():
    from datetime import date

    from wikiembed.rates import price_age_note

    assert price_age_note("2026-07-01", date(2026, 9, 29)) is None  # 90 days
    assert price_age_note("2026-07-01", date(2026, 9, 30)) == (
        "price of 2026-07-01 is 91 days old (over 90): check the provider's current price")


def test_the_write_ups_gpu_gets_dollars_and_the_price_date(topics, tmp_path, capsys):
    from datetime import date

    from wikiembed.rates import pick_price, price_age_note

    out = tmp_path / "a10g.json"
    assert main(["estimate", "--source", str(topics), "--sample", "20", "--backend", "modal", "--gpu", "A10G",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    option = json.loads(out.read_text())["options"][0]
    price = pick_price("modal", "A10G")
    assert option["usd"] == pytest.approx(option["gpu_hours"] * price.usd_per_hour, rel=1e-3)
    assert option["price_as_of"] == price.as_of and "$ n/a" not in printed and f"${option['usd']:,.2f}" in printed
    stale = price_age_note(price.as_of, date.today())
    assert option["price_stale"] is (stale is not None)
    if stale:
        assert stale in printed


def test_a_stores_rate_counts_the_time_any_shard_was_embedding_once():
    """Two shards in flight at once share the machine: their characters over the union of their
    intervals (end: the data file's mtime), not over the sum of their seconds; other backends' and
    models' shards, and shards that embedded nothing (all reused), do not count."""
    from wikiembed.rates import rate_source, store_rate
    from wikiembed.records import Marker, VectorKind

    model = "sentence-transformers/all-MiniLM-L6-v2"
    local, tei = VectorKind(backend="local", model=model), VectorKind(backend="tei", model=model)

    def marker(shard: int, chars: int, seconds: float, end_s: float, kind: VectorKind = local) -> Marker:
        return Marker(shard=shard, rows=10, chunks=10, embedded_chunks=10, embedded_chars=chars, sha256="0" * 64,
                      bytes=1, mtime_ns=int(end_s * 1e9), model=model, vectors=kind, seconds=seconds)

    done = [marker(0, 40_000, 4.0, 104.0), marker(1, 40_000, 4.0, 106.0),  # overlapping: 100-106
            marker(2, 20_000, 2.0, 200.0),  # alone: 198-200
            marker(3, 10**9, 1.0, 300.0, tei), marker(4, 0, 1.0, 400.0)]
    rate = store_rate(done, "local", "CPU", model)
    assert rate.chars_per_s == 100_000 / 8 and rate.shards == 3 and rate.kind == "store-measured"
    assert rate_source(rate) == "measured by this store's 3 done shards"
    assert store_rate(done, "local", "CPU", "another/model") is None
    assert store_rate(done, "modal", "A10G", model) is None  # many containers at once: no one machine's rate


def test_a_stores_estimate_reads_the_rows_to_embed_and_only_their_row_groups(topics, tmp_path, monkeypatch):
    """Counted over the snapshot rows of the pending shards only (a resumed run's done shards are not
    read): the articles and characters of exactly those rows, and with every one of them sampled, their
    exact chunks, whichever row groups the ranges start and end in."""
    from types import SimpleNamespace

    import pyarrow.parquet as pq

    from wikiembed.estimate import store_estimate

    rows = [json.loads(line) for line in topics.read_text().splitlines()]
    snapshot = tmp_path / "source.parquet"
    pq.write_table(pa.Table.from_pylist(rows, SNAPSHOT_SCHEMA), snapshot, row_group_size=7)
    info = model_info()
    chunking = make_chunking("tokens", None, 0, info.max_tokens)
    manifest = SimpleNamespace(chunking=chunking, model=SimpleNamespace(model_id=info.model_id, document_prompt=""))
    read: list[list[int]] = []
    real = pq.ParquetFile.iter_batches

    def recorded(self, *args, **kwargs):
        read.append(list(kwargs.get("row_groups") or []))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", recorded)
    n = len(rows)
    ranges = [(3, 9), (20, 21), (n - 5, n)]
    got = store_estimate(snapshot, ranges, manifest, backend="local", hardware="CPU", sample=10_000)
    picked = [r for a, b in ranges for r in rows[a:b]]
    chunks = chunk_table(pa.Table.from_pylist(picked, SNAPSHOT_SCHEMA), chunking, load_tokenizer()).num_rows
    assert (got.articles, got.chars, got.chunks) == (len(picked), sum(len(r["text"]) for r in picked), chunks)
    last = (n - 1) // 7
    assert read == [[0, 1, 2, *sorted({(n - 5) // 7, last})]]
