"""The PyTorch engine on the CPU, against sentence-transformers as the reference implementation.

Real parts only: the bundled all-MiniLM-L6-v2 weights, and small BERT folders
with seeded random weights built by the benchmark's own builder (so the
bge-small shape the benchmark uses is exercised too). Every expected vector
comes from `SentenceTransformer(path).encode`; the batching planner is tested
as the plain function it is.
"""

from __future__ import annotations

import contextlib
import importlib.util
import random
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
SentenceTransformer = pytest.importorskip("sentence_transformers").SentenceTransformer

from wikiembed.backends import engine as engine_module  # noqa: E402
from wikiembed.backends.engine import TorchEngine, plan_batches, spread  # noqa: E402
from wikiembed.backends.base import Backend  # noqa: E402
from wikiembed.errors import BackendError, InputError  # noqa: E402
from wikiembed.model import DEFAULT_MODEL, load_tokenizer, model_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
MIN_COSINE = 0.999

# Inputs that differ in every way the tokenizer and batching care about.
LONG = "The river crosses the national park before it reaches the city. " * 60  # ~780 tokens > 256
VARIED = [
    "a",
    "Hello world.",
    "",
    "   ",
    LONG,
    "café naïve Zürich São Paulo Kraków Ångström",
    "東京 北京 서울 Москва Αθήνα",
    "\u200fשלום\u200f القاهرة मुंबई",
    "🙂🌍👩\u200d🔬 emoji in a sentence 🚀",
    "e\u0301tude Z\u0308u\u0308rich",
    "Hello world.",  # a duplicate, far from its twin
    LONG,
    "The album was released in 1997 by the band, and the first single reached number one in the league of charts.",
]


def _load_bench() -> object:
    spec = importlib.util.spec_from_file_location("bench_engine", ROOT / "bench" / "engine.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def bench() -> object:
    return _load_bench()


@pytest.fixture(scope="module")
def reference() -> SentenceTransformer:
    return SentenceTransformer(model_info(DEFAULT_MODEL).path, device="cpu")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def engine() -> TorchEngine:
    """The engine as a multi-core CPU runs it: one worker thread per torch thread (2 here, whatever the
    test run's thread setting), each embedding its own batches."""
    with torch_threads(2):
        opened = TorchEngine(DEFAULT_MODEL, device="cpu")
    with opened:
        assert opened._cpu_workers is not None
        yield opened


def st_encode(model: SentenceTransformer, texts: list[str], normalize: bool = True) -> np.ndarray:
    return model.encode(texts, normalize_embeddings=normalize, show_progress_bar=False, convert_to_numpy=True)


# --- parity with sentence-transformers ---------------------------------------------


def test_engine_is_a_backend_with_the_models_facts(engine: TorchEngine) -> None:
    info = model_info(DEFAULT_MODEL)
    assert isinstance(engine, Backend)
    assert (engine.model_id, engine.dim, engine.max_tokens, engine.device) == (DEFAULT_MODEL, 384, 256, "cpu")
    assert info.dim == engine.dim and info.max_tokens == engine.max_tokens


def test_matches_sentence_transformers_on_varied_texts(engine: TorchEngine, reference: SentenceTransformer) -> None:
    got = engine.embed(VARIED)
    want = st_encode(reference, VARIED)
    assert got.dtype == np.float32 and got.shape == (len(VARIED), 384) and got.flags.c_contiguous
    assert np.isfinite(got).all()
    assert cosines(got, want).min() >= MIN_COSINE
    np.testing.assert_allclose(got, want, atol=1e-5)  # fp32 on CPU: the same numbers, not just the same direction
    # Duplicates embed the same wherever they sit (up to fp32 rounding: a row's place in a GEMM block).
    np.testing.assert_allclose(got[1], got[10], atol=1e-6)
    np.testing.assert_allclose(got[4], got[11], atol=1e-6)


def test_long_inputs_are_truncated_to_max_tokens_like_sentence_transformers(
    engine: TorchEngine, reference: SentenceTransformer
) -> None:
    assert len(load_tokenizer(DEFAULT_MODEL).encode(LONG).ids) > 2 * engine.max_tokens
    longer = LONG + " A different ending that lies far past the limit."
    got = engine.embed([LONG, longer])
    # Both are cut to the same first max_tokens tokens (special tokens included), so they embed the same.
    np.testing.assert_allclose(got[0], got[1], atol=1e-6)
    assert cosines(got, st_encode(reference, [LONG, longer])).min() >= MIN_COSINE


def test_empty_string_embeds_its_special_tokens_like_sentence_transformers(
    engine: TorchEngine, reference: SentenceTransformer
) -> None:
    # Documented behaviour: "" is [CLS] [SEP], a real (non-zero, normalized) vector, not an error.
    got = engine.embed([""])
    assert np.linalg.norm(got[0]) == pytest.approx(1.0, abs=1e-5)
    assert cosines(got, st_encode(reference, [""]))[0] >= MIN_COSINE


def test_original_order_is_restored_across_batches_and_windows(
    monkeypatch: pytest.MonkeyPatch, reference: SentenceTransformer
) -> None:
    rng = random.Random(7)
    words = "river city album band season league the of and in 1997 café 東京 🙂".split()
    texts = [" ".join(rng.choices(words, k=rng.randint(0, 120))) for _ in range(60)]
    rng.shuffle(texts)
    # Small windows and a small budget: many batches and three windows for 60 texts.
    monkeypatch.setitem(engine_module.WINDOW_TEXTS, "cpu", 25)
    with TorchEngine(DEFAULT_MODEL, device="cpu", max_batch_tokens=300) as small:
        got = small.embed(texts)
        one_by_one = np.stack([small.embed([t])[0] for t in texts[:12]])
    want = st_encode(reference, texts)
    assert cosines(got, want).min() >= MIN_COSINE
    np.testing.assert_allclose(got[:12], one_by_one, atol=1e-5)


def test_the_gpu_pipeline_shape_runs_on_cpu_in_order(
    monkeypatch: pytest.MonkeyPatch, reference: SentenceTransformer
) -> None:
    # The path a GPU takes (tokenizer worker processes working ahead, parts joined
    # into windows, one batch at a time, each window's vectors copied back after
    # the next one is queued), minus pinned memory: one torch thread means no CPU
    # worker threads.
    rng = random.Random(11)
    texts = [("word " * rng.randint(0, 90)) + str(i) for i in range(45)]
    monkeypatch.setitem(engine_module.WINDOW_TEXTS, "cpu", 7)
    monkeypatch.setattr(engine_module, "TOKENIZE_PART_TEXTS", 3)  # windows join 3 parts; the last is short
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with TorchEngine(DEFAULT_MODEL, device="cpu", max_batch_tokens=256, tokenize_workers=2) as piped:
            assert piped._cpu_workers is None and piped.tokenize_workers == 2
            got = piped.embed(texts)
    finally:
        torch.set_num_threads(threads)
    assert cosines(got, st_encode(reference, texts)).min() >= MIN_COSINE


def test_embed_ids_equals_embed_of_the_same_texts(engine: TorchEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    # The token chunker's ids (special tokens included) are what the engine's own tokenizer gives.
    from wikiembed.tokenizing import encode_ids

    texts = [t for t in VARIED if t != LONG]  # LONG is over the limit: ids for it never come from the chunker
    ids, offsets = encode_ids(load_tokenizer(DEFAULT_MODEL), texts)
    monkeypatch.setitem(engine_module.WINDOW_TEXTS, "cpu", 4)  # several windows, offsets not starting at 0
    got = engine.embed_ids(ids, offsets)
    np.testing.assert_allclose(got, engine.embed(texts), atol=1e-6)
    # A slice of a larger array (offsets that start past 0) embeds the same rows.
    np.testing.assert_allclose(engine.embed_ids(ids, offsets[3:]), got[3:], atol=1e-6)
    assert engine.embed_ids(ids[:0], np.zeros(1, dtype=np.int64)).shape == (0, 384)


def test_embed_ids_refuses_ids_it_cannot_embed(engine: TorchEngine) -> None:
    with pytest.raises(InputError, match="over the model's 256"):
        engine.embed_ids(np.ones(300, dtype=np.int32), np.array([0, 300]))
    with pytest.raises(InputError, match="vocabulary"):
        engine.embed_ids(np.array([101, 10**6, 102], dtype=np.int32), np.array([0, 3]))
    with pytest.raises(InputError, match="offsets"):
        engine.embed_ids(np.array([101, 102], dtype=np.int32), np.array([0, 5]))


def test_pack_batch_pads_and_masks_only_where_needed() -> None:
    ids = np.arange(100, 120, dtype=np.int32)
    offsets = np.array([0, 3, 8, 13, 20])  # lengths 3, 5, 5, 7
    packed, mask = engine_module.pack_batch(ids, offsets, np.array([3, 1]), 7, pad_id=0, mask=False)
    assert packed.dtype == np.int64 and packed.tolist() == [list(range(113, 120)), [103, 104, 105, 106, 107, 0, 0]]
    assert mask is not None and mask.tolist() == [[1] * 7, [1] * 5 + [0, 0]]
    uniform, none = engine_module.pack_batch(ids, offsets, np.array([2, 1]), 5, pad_id=0, mask=False)
    assert none is None and uniform.tolist() == [list(range(108, 113)), list(range(103, 108))]
    _, forced = engine_module.pack_batch(ids, offsets, np.array([2, 1]), 5, pad_id=0, mask=True)
    assert forced is not None and forced.all()


def test_empty_input_gives_an_empty_array(engine: TorchEngine) -> None:
    out = engine.embed([])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_vectors_are_normalized_iff_the_model_normalizes(engine: TorchEngine, bench: object, tmp_path: Path) -> None:
    norms = np.linalg.norm(engine.embed(VARIED), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)

    folder = bench.build_random_bert_folder(  # type: ignore[attr-defined]
        tmp_path / "mean-unnormalized", num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
        intermediate_size=128, pooling="mean", normalize=False,
    )
    assert not model_info(str(folder)).normalize
    with TorchEngine(str(folder), device="cpu") as raw:
        got = raw.embed(VARIED)
    want = st_encode(SentenceTransformer(str(folder), device="cpu"), VARIED, normalize=False)
    assert np.abs(np.linalg.norm(got, axis=1) - 1.0).max() > 0.1  # really not normalized
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bge_small_shaped_random_folder_builds_and_matches(bench: object, tmp_path: Path) -> None:
    # The benchmark's bge-small shape, shrunk in depth and width to stay fast; CLS pooling as bge uses.
    small = {"num_hidden_layers": 2, "hidden_size": 96, "num_attention_heads": 3, "intermediate_size": 192}
    shape = {**bench.BGE_SMALL_SHAPE, **small}  # type: ignore[attr-defined]
    folder = bench.build_random_bert_folder(tmp_path / "bge-shape", **shape)  # type: ignore[attr-defined]
    info = model_info(str(folder))
    assert (info.pooling, info.normalize, info.dim, info.max_tokens) == ("cls", True, 96, 512)
    texts = bench.make_chunks(40) + VARIED  # type: ignore[attr-defined]
    with TorchEngine(str(folder), device="cpu") as small:
        got = small.embed(texts)
    want = st_encode(SentenceTransformer(str(folder), device="cpu"), texts)
    assert got.shape == (len(texts), 96)
    assert cosines(got, want).min() >= MIN_COSINE


def test_cpu_workers_leave_torch_thread_settings_alone(engine: TorchEngine) -> None:
    with torch_threads(2):
        with TorchEngine(DEFAULT_MODEL, device="cpu") as other:
            assert other._cpu_workers is not None
            other.embed(["a thread-count check"])
            seen: list[int] = []
            probe = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
            probe.start()
            probe.join()
        assert torch.get_num_threads() == 2
        assert seen == [2]  # threads started later still get the process default


# --- inputs the engine refuses -------------------------------------------------------


def test_bad_inputs_and_a_closed_engine_are_refused_with_a_fix() -> None:
    with pytest.raises(InputError, match="dtype"):
        TorchEngine(DEFAULT_MODEL, device="cpu", dtype="int4")
    with pytest.raises(InputError, match="not a torch device"):
        TorchEngine(DEFAULT_MODEL, device="gpu")
    with pytest.raises(InputError, match="max_batch_tokens"):
        TorchEngine(DEFAULT_MODEL, device="cpu", max_batch_tokens=-5)
    closed = TorchEngine(DEFAULT_MODEL, device="cpu")
    with pytest.raises(InputError, match="not a str"):
        closed.embed(["fine", None])  # type: ignore[list-item]
    closed.close()
    closed.close()  # twice is fine
    with pytest.raises(BackendError, match="closed"):
        closed.embed(["x"])


# --- the batching planner ----------------------------------------------------------------


@pytest.mark.parametrize("budget,bucket", [(64, 1), (300, 1), (1000, 8), (4096, 16), (5, 1)])
def test_plan_batches_stays_within_the_token_budget(budget: int, bucket: int) -> None:
    rng = np.random.default_rng(budget + bucket)
    lengths = rng.integers(1, 200, size=500)
    batches = plan_batches(lengths, budget, bucket=bucket, max_length=256)
    seen = np.concatenate([b.rows for b in batches])
    assert sorted(seen.tolist()) == list(range(len(lengths)))  # every text exactly once
    for batch in batches:
        longest = int(lengths[batch.rows].max())
        assert batch.length >= longest  # nothing is cut by padding
        assert batch.length % bucket == 0 or batch.length == 256  # bucketed, unless capped at max_length
        assert len(batch.rows) * batch.length <= budget or len(batch.rows) == 1
        assert lengths[batch.rows[0]] == longest  # longest first: the batch pads to its first text
        # Padding per text is capped (10% of the batch's longest text, or 8 tokens).
        assert longest - lengths[batch.rows].min() <= max(8, 0.1 * longest)
    firsts = [int(lengths[b.rows[0]]) for b in batches]
    assert firsts == sorted(firsts, reverse=True)  # texts are taken longest first


def test_plan_batches_packs_by_tokens_not_by_count() -> None:
    lengths = np.array([100] * 10 + [10] * 100)
    batches = plan_batches(lengths, max_batch_tokens=500)
    # 5 long texts fit a batch, 50 short ones do: the count follows the length.
    assert [len(b.rows) for b in batches] == [5, 5, 50, 50]
    assert [b.length for b in batches] == [100, 100, 10, 10]


def test_spread_splits_a_small_call_over_the_workers() -> None:
    lengths = np.array([12, 11, 11, 9, 8, 7, 7, 5])
    batches = plan_batches(lengths, max_batch_tokens=2048)
    assert len(batches) == 1  # eight short queries: one batch, which would keep one CPU worker busy
    split = spread(batches, lengths, parts=2)
    assert [b.rows.tolist() for b in split] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [b.length for b in split] == [12, 8]  # the shorter half pads only to its own longest text
    # Every text once, longest first in each batch, never below its own length; bucketing kept.
    four = spread(plan_batches(lengths, 2048, bucket=4), lengths, parts=4, bucket=4)
    assert sorted(np.concatenate([b.rows for b in four]).tolist()) == list(range(8))
    assert all(b.length >= lengths[b.rows].max() and b.length % 4 == 0 for b in four)
    assert len(four) == 4
    # One text cannot be split; enough batches already are left as planned.
    assert len(spread(plan_batches(lengths[:1], 2048), lengths[:1], parts=2)) == 1
    many = plan_batches(np.full(100, 50), max_batch_tokens=500)
    assert spread(many, np.full(100, 50), parts=2) == many


def test_a_small_call_spread_over_cpu_workers_matches_one_batch() -> None:
    import torch

    if torch.get_num_threads() < 2:
        pytest.skip("one torch thread: the engine runs without CPU workers")
    texts = ["a short query", "another one, a little longer than the first", "third", "and a fourth query here"]
    engine = TorchEngine(DEFAULT_MODEL, device="cpu")
    assert engine._cpu_workers is not None and engine._cpu_workers.workers >= 2
    try:
        spread_out = engine.embed(texts)
        together = np.stack([engine.embed([t])[0] for t in texts])
    finally:
        engine.close()
    np.testing.assert_allclose(spread_out, together, atol=1e-5)


def test_plan_batches_prefers_batches_of_one_length() -> None:
    lengths = np.array([30] * 6 + [29] * 6)
    # Budget for 10 rows of 30: the first batch stops at the length change (6 >= half of 10) -> no padding.
    batches = plan_batches(lengths, max_batch_tokens=300, min_fill=0.5)
    assert [(len(b.rows), b.length) for b in batches] == [(6, 30), (6, 29)]
    # Below the fill threshold it keeps packing and pads instead.
    batches = plan_batches(lengths, max_batch_tokens=300, min_fill=0.9)
    assert [(len(b.rows), b.length) for b in batches] == [(10, 30), (2, 29)]


def test_plan_batches_caps_the_padding_of_each_text() -> None:
    lengths = np.array([100, 95, 91, 89, 50, 45, 43, 41])
    batches = plan_batches(lengths, max_batch_tokens=10_000, max_padding=0.1, padding_slack=4)
    # 89 would need 11 tokens of padding to reach 100 (> 10%); 43 would need 7 to reach 50 (> 10% and > 4).
    got = [sorted(lengths[b.rows].tolist(), reverse=True) for b in batches]
    assert got == [[100, 95, 91], [89], [50, 45], [43, 41]]
    # The slack wins for short texts: 41 is within 10 tokens of 50.
    batches = plan_batches(lengths, max_batch_tokens=10_000, max_padding=0.1, padding_slack=10)
    assert [len(b.rows) for b in batches] == [3, 1, 4]


def test_plan_batches_caps_bucketing_at_max_length() -> None:
    batches = plan_batches(np.array([250, 256, 3]), max_batch_tokens=10_000, bucket=32, max_length=256)
    assert batches[0].length == 256  # 256 rounded to 32 is 256; 250 would round to 256 too, never past the cap
    assert plan_batches(np.array([250]), 10_000, bucket=32, max_length=260)[0].length == 256
    assert plan_batches(np.array([]), 100) == []


# --- tokenize once: a token-chunked shard is embedded from its stored ids -------------------------


def test_a_token_chunked_shard_is_embedded_from_its_ids(
    engine: TorchEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wikiembed.backends.base import Serialized
    from wikiembed.embedding import embed_shard, read_vectors
    from wikiembed.chunking import Chunking, chunk_table, write_parquet_atomic
    from wikiembed.sample import generate_articles
    from wikiembed.records import Manifest, ModelRecord, ShardPlan
    from wikiembed.store import Store

    store = Store(tmp_path / "store", "g1")
    store.ensure_writable()
    store.write_manifest(Manifest(plan=ShardPlan(shards=[(0, 12)], rows=12, shard_rows=12), chunking=Chunking("tokens", 128, 0),
                                  model=ModelRecord(model_id=DEFAULT_MODEL, revision="bundled", dim=384)))  # fmt: skip
    chunks = chunk_table(pa.Table.from_pylist(list(generate_articles(12))), Chunking("tokens", 128, 0), load_tokenizer())
    write_parquet_atomic(chunks, store.chunks_path(0))
    want = engine.embed(chunks.column("text").to_pylist())
    monkeypatch.setattr(engine, "embed", lambda texts: pytest.fail("the text was tokenized again"))
    marker = embed_shard(store, 0, Serialized(engine), rows=12)
    texts, vectors = read_vectors(store.data_path(0))
    assert marker.chunks == len(texts) == chunks.num_rows
    np.testing.assert_allclose(vectors, want, atol=1e-6)
    assert "input_ids" not in pq.read_schema(store.data_path(0)).names  # the ids stay in chunks/
