"""Chunkers and the shard plan, with the bundled model's real tokenizer."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from wikiembed.errors import InputError
from wikiembed.model import load_tokenizer, model_info
from wikiembed.sample import generate_articles
from wikiembed.chunking import Chunking, chunk_chars, chunk_table, make_chunking, plan_shards


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def _articles(n: int) -> pa.Table:
    rows = list(generate_articles(n))
    rows.append({"id": "x1", "url": "", "title": "one long word", "text": "a" * 5000 + " end"})
    rows.append({"id": "x2", "url": "", "title": "unicode", "text": "東京 " * 600 + "\u200fשלום e\u0301 🙂\n\n" * 40})
    rows.append({"id": "x3", "url": "", "title": "control", "text": "\x01\x02\x03"})
    rows.append({"id": "x4", "url": "", "title": "no breaks", "text": "x" * 3 + ",".join(["y"] * 3000)})
    return pa.Table.from_pylist(rows)


def _check_invariants(articles: pa.Table, chunks: pa.Table) -> None:
    texts = dict(zip(articles.column("id").to_pylist(), articles.column("text").to_pylist()))
    covered = {k: np.zeros(len(v), dtype=bool) for k, v in texts.items()}
    last_index: dict[str, int] = {}
    for row_id, idx, s, e, text in zip(
        chunks.column("id").to_pylist(),
        chunks.column("chunk_index").to_pylist(),
        chunks.column("char_start").to_pylist(),
        chunks.column("char_end").to_pylist(),
        chunks.column("text").to_pylist(),
    ):
        assert texts[row_id][s:e] == text and text.strip() == text and text
        assert idx == last_index.get(row_id, -1) + 1
        last_index[row_id] = idx
        covered[row_id][s:e] = True
    for row_id, text in texts.items():
        missed = [c for c, hit in zip(text, covered[row_id]) if not hit and not c.isspace()]
        assert not missed, f"article {row_id}: characters in no chunk: {missed[:10]}"


@pytest.mark.parametrize("size,overlap", [(256, 0), (64, 0), (128, 16)])
def test_token_chunks_cover_everything_and_fit_the_model(tokenizer, size, overlap):
    articles = _articles(300)
    chunks = chunk_table(articles, Chunking("tokens", size, overlap), tokenizer)
    _check_invariants(articles, chunks)
    counts = [len(e.ids) for e in tokenizer.encode_batch(chunks.column("text").to_pylist())]  # with special tokens
    assert max(counts) <= size
    # windows are filled, not fragmented: most chunks of long articles use over half the budget
    assert np.median(counts) > size * 0.4


def test_token_chunks_prefer_paragraph_breaks(tokenizer):
    para = "This is a sentence of moderate length about rivers. " * 6
    text = "\n\n".join([para.strip()] * 8)
    chunks = chunk_table(pa.Table.from_pylist([{"id": "1", "url": "", "title": "", "text": text}]), Chunking("tokens", 256, 0), tokenizer)
    for s, e in zip(chunks.column("char_start").to_pylist()[:-1], chunks.column("char_end").to_pylist()[:-1]):
        assert text[e:e + 2] == "\n\n"  # every cut but the last lands on a paragraph break


def test_chars_chunker_matches_seed_windows():
    text = "abcdefghij" * 30
    assert chunk_chars(text, 100) == [(0, 100), (100, 200), (200, 300)]
    assert chunk_chars("   " + "x" * 10, 5) == [(3, 5), (5, 10), (10, 13)]
    articles = _articles(50)
    _check_invariants(articles, chunk_table(articles, Chunking("chars", 512, 0)))


def test_chunk_files_are_deterministic(tokenizer, tmp_path):
    from wikiembed.chunking import write_parquet_atomic

    articles = _articles(100)
    for name in ("a", "b"):
        write_parquet_atomic(chunk_table(articles, Chunking("tokens", 128, 0), tokenizer), tmp_path / f"{name}.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert not list(tmp_path.glob(".*"))  # no temp files left


def test_plan_and_option_validation():
    assert plan_shards(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert plan_shards(0, 4) == []
    max_tokens = model_info().max_tokens
    assert make_chunking("tokens", None, 0, max_tokens).chunk_size == 256
    with pytest.raises(InputError, match="max sequence length"):
        make_chunking("tokens", max_tokens + 1, 0, max_tokens)
    with pytest.raises(InputError, match="--chunk-overlap"):
        make_chunking("tokens", 64, 40, max_tokens)
    with pytest.raises(InputError, match="--chunker"):
        make_chunking("words", 64, 0, max_tokens)


def test_token_chunks_carry_the_ids_the_tokenizer_gives_their_text(tokenizer):
    articles = _articles(120)
    chunks = chunk_table(articles, Chunking("tokens", 64, 0), tokenizer)
    assert chunks.schema.field("input_ids").type == pa.list_(pa.int32())
    want = [e.ids for e in tokenizer.encode_batch(chunks.column("text").to_pylist())]  # special tokens included
    assert chunks.column("input_ids").to_pylist() == want
    assert "input_ids" not in chunk_table(articles, Chunking("chars", 512, 0)).schema.names  # chars: text only


def test_worker_processes_give_the_same_chunks(tokenizer, monkeypatch):
    from wikiembed import chunk_files

    articles = _articles(150)
    alone = chunk_table(articles, Chunking("tokens", 128, 16), tokenizer, workers=1)
    monkeypatch.setattr(chunk_files, "PARALLEL_MIN_CHARS", 0)
    monkeypatch.setattr(chunk_files, "PART_CHARS", 20_000)  # many parts, each a few articles
    assert chunk_table(articles, Chunking("tokens", 128, 16), tokenizer, workers=2).equals(alone)


def test_non_bert_tokenizers_are_rechecked_and_their_ids_match(tokenizer):
    from tokenizers import Tokenizer, pre_tokenizers

    other = Tokenizer.from_str(tokenizer.to_str())
    other.pre_tokenizer = pre_tokenizers.Whitespace()  # not BERT's: cuts are re-counted, ids re-tokenized
    articles = _articles(40)
    chunks = chunk_table(articles, Chunking("tokens", 64, 0), other)
    _check_invariants(articles, chunks)
    want = [e.ids for e in other.encode_batch(chunks.column("text").to_pylist())]
    assert chunks.column("input_ids").to_pylist() == want and max(map(len, want)) <= 64


def test_a_shard_chunked_part_by_part_writes_the_same_file_and_nothing_when_stopped(tmp_path, monkeypatch):
    """chunk_shard_parts hands out parts while worker processes cut the next ones; the file it
    leaves is byte-identical to one write of the whole table, and closing it early leaves none."""
    import pyarrow.parquet as pq

    from wikiembed import chunk_files, chunking
    from wikiembed.plan import prepare
    from wikiembed.settings import RunSettings
    from wikiembed.sources import read_snapshot_rows

    prepared = prepare(RunSettings(source="sample:400", store=str(tmp_path / "store"), shard_rows=400))
    store, manifest = prepared.store, prepared.manifest
    monkeypatch.setattr(chunk_files, "CHUNK_ROW_GROUP", 100)  # several row groups, cut across parts
    whole = chunk_table(read_snapshot_rows(store.snapshot_path, 0, 400), manifest.chunking, load_tokenizer(), workers=1)
    chunking.write_parquet_atomic(whole, tmp_path / "whole.parquet", row_group_size=100)

    monkeypatch.setattr(chunk_files, "PARALLEL_MIN_CHARS", 0)
    monkeypatch.setattr(chunk_files, "PART_CHARS", 20_000)  # many parts, on the worker processes
    dest = store.chunks_path(0)
    parts = chunking.chunk_shard_parts(store, 0, manifest)
    first = next(parts)
    assert 0 < first.num_rows < whole.num_rows and not dest.exists()  # handed out before the shard is cut
    rest = list(parts)
    assert pa.concat_tables([first, *rest]).combine_chunks().equals(whole)
    assert dest.read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert pq.ParquetFile(dest).num_row_groups == -(-whole.num_rows // 100)

    dest.unlink()
    stopped = chunking.chunk_shard_parts(store, 0, manifest)
    next(stopped)
    stopped.close()  # the embedding failed: no chunk file, no temp file
    assert not dest.exists() and not list(dest.parent.glob(".*"))

