"""Fine-tune a store's model on judged queries: the first step of the improve loop.

From a store and a pairs file (the judged-queries format of `wikiembed.queries`), `finetune` writes a
sentence-transformers folder trained with sentence-transformers' own trainer:

- pairs whose ids the store does not hold are counted and left out; queries the model reads as the same
  (the same token ids, after Unicode NFKC and with whitespace collapsed: "Hamlet" and "hamlet " for an
  uncased model) are one query, counted as near-duplicates; a seeded share of the queries (default 20%)
  is then held out and never trained on, so no query is judged on its own twin;
- each training query's positive is the chunk of a relevant article that the store's own vectors rank
  highest for it (or the named chunk); its hard negatives are the store's top hits for it that belong
  to no relevant article, found through the approximate index where one is built;
- the loss is MultipleNegativesRankingLoss (in-batch negatives plus the hard ones), its cached variant
  (GradCache) for batches too large to hold at once, with batches free of duplicate texts; each layer's
  activations are recomputed in the backward pass, so a step holds one layer's (`CHECKPOINT_ACTIVATIONS`);
- the held-out queries are scored before and after on one candidate pool (their top store hits plus
  every chunk of their relevant articles, embedded by each model): a quick verdict for the card; the
  full verdict over every chunk is re-embedding the store and `wikiembed eval --queries`.

The folder holds the model, `README.md` (its model card with what it was trained from and on, and the
figures), `finetune.json` (the same as data), and `train.jsonl` / `heldout.jsonl` (the split). It is
written under a temporary name and renamed, so a folder at `out` is always complete; asking again for
the same fine-tune returns the recorded one, and a different one refuses to overwrite it. One fine-tune
at a time writes a given `out`: it holds the lock `.OUT.lock` beside it (the store's kind of lock, a
`flock` the kernel drops when its process dies), and another is refused at once, naming the holder.

`finetune_at_store` is the same where the store lives on a Modal Volume (`modal_workers/finetune_app.py`):
the model is trained next to the vectors and written back to the Volume; nothing passes the flow's machine.

Touches: the store's data files (read), the pairs file (read), the model's files (read), `out` and its lock
beside it (written).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wikiembed import atomic
from wikiembed.compact import column_values
from wikiembed.errors import InputError
from wikiembed.finetune_settings import MINE_DEPTH, FinetuneSettings  # noqa: F401 (what callers import from here)
from wikiembed.evaluate import DEPTH, judge, metrics, paired_difference
from wikiembed.model import load_tokenizer, model_info
from wikiembed.queries import JudgedQuery, match, read_queries, split_holdout, store_keys
from wikiembed.search import StoreVectors
from wikiembed.results import METRICS, Figures, FinetuneRecord, PairCounts
from wikiembed.store_files import LOCAL, StoreLock, StoreSync

RECORD = "finetune.json"
# Fewer training queries than this teach noise, not the users' intent: refuse rather than publish it.
MIN_TRAIN_QUERIES = 20
# Batches above this are trained with the cached loss (GradCache), in mini-batches of CACHED_MINI_BATCH:
# the in-batch negatives of a large batch then fit a GPU that could not hold the whole batch at once.
CACHED_ABOVE = 64
CACHED_MINI_BATCH = 32
# The engine must give the model's own vectors (cosine to sentence-transformers' encode) for the
# fine-tuned folder to re-embed the store; bfloat16 on a GPU stays above 0.99.
PARITY_COSINE = 0.98
PARITY_TEXTS = 8
# Training recomputes each layer's activations in the backward pass instead of keeping them from the forward
# one. With attention dropout on, attention is materialized per head: three tensors of batch x heads x tokens^2
# floats a layer (576 MiB at 64 texts of 256 tokens, 12 heads), about 1 GiB a layer in all; MiniLM at batch 32
# with one hard negative kept 6.2 GiB for its six layers and peaked near 9 GB. Recomputed, one layer's are held
# at a time. The random state is replayed, so the gradients, and the model, are the same bit for bit; a step
# costs one more forward pass.
CHECKPOINT_ACTIVATIONS = True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def model_reading(model: str) -> Callable[[str], Hashable]:
    """A query as the model reads it: the token ids of its text in Unicode NFKC with whitespace collapsed
    (the model's own tokenizer lowercases and strips accents where the model does)."""
    tokenizer = load_tokenizer(model)
    return lambda text: tuple(tokenizer.encode(" ".join(unicodedata.normalize("NFKC", text).split()), add_special_tokens=False).ids)


def merge_alike(queries: Sequence[JudgedQuery], key: Callable[[str], Hashable]) -> tuple[list[JudgedQuery], int]:
    """(queries, how many were merged into another): queries that `key` maps to the same value are one query,
    whose relevant items are the union of theirs, as rows of one text are on reading.

    With `key` the query as the model reads it, "Hamlet" and "hamlet" are one query to an uncased model:
    split apart, one would be trained on and its twin judged as if never seen. The merged query keeps the
    smallest of its texts, so the split does not depend on the order of the file."""
    groups: dict[Hashable, list[JudgedQuery]] = {}
    for q in queries:
        groups.setdefault(key(q.text), []).append(q)
    merged = [JudgedQuery(min(q.text for q in group), frozenset().union(*(q.relevant for q in group))) for group in groups.values()]
    return merged, len(queries) - len(merged)


def check_holdout(held: int, queries: int, fraction: float, minimum: int, pairs: str | Path) -> None:
    """Refuse a held-out share too small to decide on: say how many queries it falls short, and what gives more."""
    if held >= minimum:
        return
    needed = math.ceil(round(minimum / fraction, 6))  # queries that hold out the minimum at this share
    share = math.ceil(round(100 * minimum / queries, 6)) / 100  # the share that holds out the minimum of these
    raise_share = (f", or raise --holdout to {share:g} (keeping {queries - round(share * queries)} to train on)"
                   if queries - round(share * queries) >= MIN_TRAIN_QUERIES else "")
    raise InputError(
        f"--pairs {pairs}: {held} of its {queries} queries that match the store held out (--holdout {fraction:g}), "
        f"{minimum - held} short of the {minimum} the publish decision needs (--min-holdout): fewer cannot tell a gain "
        f"from chance. Collect about {needed - queries} more judged queries ({needed} in all at --holdout "
        f"{fraction:g}){raise_share}; or lower --min-holdout, and with it what the verdict can be trusted for."
    )


def out_lock(out: Path) -> StoreLock:
    """The lock one fine-tune holds while it writes `out`: the store's kind of lock, on `.OUT.lock` beside it,
    removed on release; another fine-tune into the same folder is refused at once, naming the holder."""
    return StoreLock(out.parent / f".{out.name}.lock", what=f"--out {out}", remove=True,
                     fix="another fine-tune is writing it: wait for that one to finish (the same command then returns "
                         "its model), or give another --out")


def _write_queries(path: Path, queries: Sequence[JudgedQuery]) -> None:
    """Queries in the judged-queries format, one row per relevant item (rows of one query merge on reading)."""
    with path.open("w", encoding="utf-8") as fh:
        for q in queries:
            for article_id, chunk_index in sorted(q.relevant, key=lambda k: (k[0], -1 if k[1] is None else k[1])):
                row: dict[str, Any] = {"query": q.text, "id": article_id}
                if chunk_index is not None:
                    row["chunk_index"] = chunk_index
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _relevant_chunks(vectors: StoreVectors, ids: set[str]) -> dict[tuple[str, int], tuple[str, np.ndarray]]:
    """(text, float32 vector) of every chunk of the given articles, read in one pass over the store."""
    form = vectors.form("float32")
    wanted = pa.array(sorted(ids), type=pa.string())
    out: dict[tuple[str, int], tuple[str, np.ndarray]] = {}
    for batch in vectors.live_batches(["id", "chunk_index", "text", form.column]):
        keep = pc.is_in(batch.column("id"), value_set=wanted)
        if not pc.any(keep).as_py():
            continue
        picked = batch.filter(keep)
        values = column_values(picked.column(form.column), form)
        for i, c, t, v in zip(picked.column("id").to_pylist(), picked.column("chunk_index").to_pylist(),
                              picked.column("text").to_pylist(), values):
            out[(i, int(c))] = (t, np.asarray(v, dtype=np.float32))
    return out


def _device(asked: str | None) -> str:
    import torch

    if asked:
        if asked == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda: torch sees no CUDA GPU here; use --device cpu.")
        return asked
    return "cuda" if torch.cuda.is_available() else "cpu"


def _encode(model: Any, texts: Sequence[str], kind: str) -> np.ndarray:
    """Queries or documents as the model encodes them (its prompts applied), L2-normalized float32."""
    encode = model.encode_query if kind == "query" else model.encode_document
    return np.asarray(encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                             show_progress_bar=False), dtype=np.float32)


def _pool_figures(model: Any, held: Sequence[JudgedQuery], pool_keys: list[tuple[str, int]], pool_texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`judge` of the held-out queries ranked against the pool by one model."""
    docs = _encode(model, pool_texts, "document")
    queries = _encode(model, [q.text for q in held], "query")
    order = np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :DEPTH]
    return judge(held, [[pool_keys[j] for j in line] for line in order])


def _check_engine_parity(model_id: str, model: Any, texts: Sequence[str], device: str) -> None:
    """Refuse a model whose vectors the engine would not reproduce: a fine-tune of it could not re-embed the store."""
    from wikiembed.backends.factory import open_backend

    prompt = model_info(model_id).prompt(None, "document")  # the one encode_document puts before each text
    engine = np.asarray(open_backend("local", model_id, device=device).embed(list(texts), prompt), dtype=np.float32)
    reference = _encode(model, texts, "document")
    engine = engine / np.maximum(np.linalg.norm(engine, axis=1, keepdims=True), 1e-12)
    worst = float(np.min(np.sum(engine * reference, axis=1)))
    if worst < PARITY_COSINE:
        raise InputError(
            f"model {model_id!r}: the engine's vectors differ from sentence-transformers' own (cosine {worst:.3f} < "
            f"{PARITY_COSINE}), so a fine-tune of it could not re-embed the store faithfully; fine-tune a model the "
            "engine reproduces (docs/MODELS.md lists the shapes)."
        )


def _read_while_training(limit: int | None) -> str:
    return "whole texts read while training (up to the model's limit)" if limit is None else f"the first {limit} tokens of each text read while training"


def _card(record: FinetuneRecord) -> str:
    """The model card's markdown section on how this model was made and how it scores."""
    s, p = record.settings, record.pairs

    def cell(block: Figures, m: str, sign: str = "") -> str:
        lo, hi = block.interval(m)
        return f"{block.value(m):{sign}.3f} [{lo:{sign}.3f}, {hi:{sign}.3f}]"

    rows = "\n".join(
        f"| {label} | " + " | ".join(cell(block, m, sign) for m in METRICS) + " |"
        for label, block, sign in (("base", record.before, ""), ("fine-tuned", record.after, ""), ("difference", record.difference, "+"))
    )
    return f"""# Fine-tuned {record.base_model}

Fine-tuned with `wikiembed finetune` (sentence-transformers' trainer, {record.loss}).

- **Base model**: `{record.base_model}`, revision `{record.base_revision}`
- **Store**: `{record.store}`, generation `{record.generation}` ({record.chunks:,} chunks)
- **Pairs**: {p.read} queries read from `{record.pairs_file}`, {p.matched} matching the store \
({p.unmatched} naming nothing in it, {p.near_duplicates} merged into a query the model reads the same); \
{record.train} trained on, {record.holdout} held out (never trained on)
- **Settings**: {s['epochs']} epoch(s), batch size {s['batch_size']}, learning rate {s['learning_rate']}, \
{s['negatives']} hard negative(s) per pair from the store's vectors ({record.negatives_from}), held out {s['holdout']:.0%} \
with seed {s['seed']}, {_read_while_training(s.get('max_seq_length'))}, device {record.device}, {record.seconds:.0f} s

## Held-out queries, before and after

Each of the {record.holdout} held-out queries ranked against one pool of {record.pool:,} chunks (their top \
{MINE_DEPTH} store hits and every chunk of their relevant articles), embedded by each model; 95% intervals in \
brackets, the difference paired per query. The verdict over the whole corpus is re-embedding the store with this \
model and `wikiembed eval --queries heldout.jsonl --against NEW_STORE`.

| model | recall@1 | recall@10 | MRR@10 | nDCG@10 |
| --- | --- | --- | --- | --- |
{rows}
"""


# What a fine-tune says as it trains: a line a person reads, and the share of the training steps done.
Report = Callable[[str, float], None]


def _to_stderr(line: str, done: float) -> None:
    print(line, file=sys.stderr, flush=True)


def finetune(
    store: str | Path, pairs: str | Path, out: str | Path, settings: FinetuneSettings | None = None, *, gen: str | None = None,
    min_holdout: int = 1, lock: bool = True, report: Report = _to_stderr,
) -> FinetuneRecord:
    """Fine-tune the store's model on the pairs into `out`; return the `--json` payload (also `out/finetune.json`).

    `min_holdout`: refuse, before any training, a split that holds out fewer queries (the improve loop's
    publish decision needs them). `lock`: hold `out_lock(out)` throughout (off on a Modal Volume, where a
    flock reaches no other container). `report`: told each logging step (epoch, step of steps, loss) and the
    end of training (default: a line on stderr)."""
    settings = settings or FinetuneSettings()
    out = Path(out).expanduser().resolve()
    if not lock:
        return _finetune(store, Path(pairs).expanduser(), out, settings, gen, min_holdout, report)
    with out_lock(out):
        return _finetune(store, Path(pairs).expanduser(), out, settings, gen, min_holdout, report)


def _step_reports(report: Report) -> Any:
    """A trainer callback that turns the trainer's logs into `report` lines: one per logging step
    ("fine-tune: epoch 1.50 of 2, step 30 of 40, loss 0.4215") and one at the end, in place of the raw
    dicts the trainer prints."""
    from transformers import TrainerCallback

    class StepReports(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            logs, steps = logs or {}, max(state.max_steps, 1)
            if "loss" in logs:
                report(f"fine-tune: epoch {state.epoch:.2f} of {args.num_train_epochs:g}, step {state.global_step} of "
                       f"{state.max_steps}, loss {logs['loss']:.4f}", state.global_step / steps)
            elif "train_loss" in logs:
                report(f"fine-tune: trained {state.global_step} steps in {logs.get('train_runtime', 0):.0f} s, mean loss "
                       f"{logs['train_loss']:.4f}", 1.0)

    return StepReports()


def _finetune(store: str | Path, pairs: Path, out: Path, settings: FinetuneSettings, gen: str | None,
              min_holdout: int, report: Report = _to_stderr) -> FinetuneRecord:
    vectors = StoreVectors(store, gen)
    info = vectors.model_files("fine-tune from the store's own model files")
    queries = read_queries(pairs)
    inputs = {"store": str(vectors.root), "generation": vectors.store.gen, "pairs_sha256": _sha256(pairs),
              "base_revision": info.revision, "settings": settings.model_dump()}
    if out.exists():
        try:
            done = json.loads((out / RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            done = None
        if isinstance(done, dict) and done.get("inputs") == inputs:
            return FinetuneRecord.from_json(done)  # this very fine-tune is already there (a rerun of an interrupted loop)
        raise InputError(f"--out {out}: exists and holds something else; give a new folder (e.g. one per week), or remove it.")

    named = {key for q in queries for key in q.relevant}
    matched = match(queries, store_keys(vectors.live_batches(["id", "chunk_index"]), named), f"store {vectors.root}")
    alike, near_duplicates = merge_alike(matched.queries, model_reading(vectors.model_id))
    train, held = split_holdout(alike, settings.holdout, settings.seed)
    if len(train) < MIN_TRAIN_QUERIES:
        raise InputError(
            f"--pairs {pairs}: {len(train)} queries left to train on ({matched.unmatched} of {matched.read} name nothing "
            f"in the store, {near_duplicates} read by the model as another, {len(held)} held out); at least "
            f"{MIN_TRAIN_QUERIES} are needed: collect more feedback."
        )
    check_holdout(len(held), len(alike), settings.holdout, min_holdout, pairs)
    device = _device(settings.device)
    started = time.perf_counter()

    # Mining: each query's top store hits (through the index where one is built) and its relevant chunks.
    everything = [*train, *held]
    qvecs = vectors.embed_queries([q.text for q in everything], device=device)
    ranking = vectors.top(qvecs, MINE_DEPTH, vectors.form("float32"))
    hits = vectors.rows(ranking.positions, columns=("id", "chunk_index", "text"))
    relevant = _relevant_chunks(vectors, {i for q in everything for i in q.article_ids})
    chunks_of: dict[str, list[tuple[str, int]]] = {}
    for key in relevant:
        chunks_of.setdefault(key[0], []).append(key)
    examples: list[dict[str, str]] = []
    for qi, q in enumerate(train):
        negatives = [hits[int(p)]["text"] for p in ranking.positions[qi] if p >= 0 and hits[int(p)]["id"] not in q.article_ids]
        for article_id in sorted(q.article_ids):
            # Chunk-level judgements name their chunk; an article's positive is its chunk nearest the query.
            named = [(article_id, c) for a, c in q.relevant if a == article_id and c is not None]
            candidates = named or chunks_of[article_id]
            best = max(candidates, key=lambda k: float(relevant[k][1] @ qvecs[qi]))
            example = {"anchor": q.text, "positive": relevant[best][0]}
            for n, text in enumerate(negatives[: settings.negatives]):
                example[f"negative_{n + 1}"] = text
            examples.append(example)
    width = min(len(e) for e in examples)  # every row needs the same columns: the fewest negatives found
    examples = [{k: e[k] for k in list(e)[:width]} for e in examples]

    # The held-out pool: their top hits and every chunk of their relevant articles.
    pool: dict[tuple[str, int], str] = {}
    for qi in range(len(train), len(everything)):
        for p in ranking.positions[qi]:
            if p >= 0:
                pool[(hits[int(p)]["id"], int(hits[int(p)]["chunk_index"]))] = hits[int(p)]["text"]
        for article_id in everything[qi].article_ids:
            pool.update((key, relevant[key][0]) for key in chunks_of[article_id])
    pool_keys, pool_texts = list(pool), list(pool.values())

    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss

    model = SentenceTransformer(info.path, device=device)
    _check_engine_parity(vectors.model_id, model, [e["positive"] for e in examples[:PARITY_TEXTS]], device)
    before = _pool_figures(model, held, pool_keys, pool_texts)

    # A fine-tune killed before its rename leaves its temporary folder (under the lock, no other is running): nothing
    # in it is reused.
    tmp = atomic.begin_dir(out)
    if settings.batch_size > CACHED_ABOVE:
        loss: Any = CachedMultipleNegativesRankingLoss(model, mini_batch_size=CACHED_MINI_BATCH)
    else:
        loss = MultipleNegativesRankingLoss(model)
    # The model's own prompts go on during training as they will in use (e5's "query: ", bge's instruction).
    prompts = {"anchor": (model.prompts or {}).get("query")}
    document_prompt = (model.prompts or {}).get("document")
    prompts.update({k: document_prompt for k in examples[0] if k != "anchor"})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp / "_trainer"),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        warmup_steps=0.1,  # a float: the share of steps spent warming up
        seed=settings.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # a duplicate text in a batch would be a false negative
        prompts={k: v for k, v in prompts.items() if v} or None,
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, len(examples) // settings.batch_size // 10),
        disable_tqdm=True,
        use_cpu=device == "cpu",
        activation_checkpointing=CHECKPOINT_ACTIVATIONS,  # the peak memory of a step: see CHECKPOINT_ACTIVATIONS
        activation_checkpointing_kwargs={"use_reentrant": False} if CHECKPOINT_ACTIVATIONS else None,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), loss=loss,
                                         callbacks=[_step_reports(report)])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # its raw dicts ({'loss': ...}): `report` says the same in words
    own_limit = model.max_seq_length
    if settings.max_seq_length is not None and settings.max_seq_length < own_limit:
        model.max_seq_length = settings.max_seq_length  # training reads each text's first tokens only
    try:
        result = trainer.train()
    finally:
        model.max_seq_length = own_limit  # measured and saved with the limit the engine embeds with
    shutil.rmtree(tmp / "_trainer", ignore_errors=True)
    after = _pool_figures(model, held, pool_keys, pool_texts)
    model.save(str(tmp))

    record = FinetuneRecord(
        out=str(out),
        base_model=vectors.model_id,
        base_revision=info.revision,
        store=str(vectors.root),
        generation=vectors.store.gen,
        chunks=vectors.chunks,
        pairs_file=str(pairs),
        pairs=PairCounts(matched.read, len(matched.queries), matched.unmatched, matched.missing_items, near_duplicates),
        train=len(train),
        holdout=len(held),
        examples=len(examples),
        negatives_from="approximate index" if ranking.method == "index" else "exact scan",
        loss=type(loss).__name__,
        settings=settings.model_dump(),
        device=device,
        train_loss=float(result.training_loss),
        pool=len(pool_keys),
        before=metrics(*before),
        after=metrics(*after),
        difference=paired_difference(before, after).replace(meaning="fine-tuned minus base, paired on the held-out queries"),
        seconds=time.perf_counter() - started,
        inputs=inputs,
    )
    _write_queries(tmp / "train.jsonl", train)
    _write_queries(tmp / "heldout.jsonl", held)
    # sentence-transformers wrote its own card (architecture, usage): ours goes first, after its YAML header.
    generated = (tmp / "README.md").read_text(encoding="utf-8") if (tmp / "README.md").exists() else ""
    header, body = "", generated
    if generated.startswith("---\n") and "\n---\n" in generated[4:]:
        end = generated.index("\n---\n", 4) + 5
        header, body = generated[:end], generated[end:]
    (tmp / "README.md").write_text(header + _card(record) + "\n" + body, encoding="utf-8")
    (tmp / RECORD).write_text(json.dumps(record.to_json(), indent=1), encoding="utf-8")
    atomic.finish_dir(tmp, out)
    return record


def finetune_at_store(root: str, pairs: str, out: str, settings: dict[str, Any], sync: StoreSync = LOCAL) -> dict[str, Any]:
    """`finetune` where the store is: see others' commits first, publish the model folder after. Returns the
    record's JSON (`FinetuneRecord.to_json()`): what crosses from the container is plain JSON."""
    sync.reload()
    record = finetune(root, pairs, out, FinetuneSettings(**settings), lock=False)
    sync.commit()
    return record.to_json()
