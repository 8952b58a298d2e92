"""Retrieval checks: the user's own judged queries, or, needing no labels, titles as queries.

With a queries file (`wikiembed.queries`: a query and its relevant articles or chunks), each query is
searched for and scored: recall@1 and recall@10 (a relevant item in the top 1 / 10), MRR@10 and
nDCG@10 (binary gains, each relevant item counted once), with 95% intervals; queries whose relevant
items are not in the store are counted and left out. Queries are embedded by
`StoreVectors.embed_queries`, so they get the model's query treatment.

Without one, the check needs no labels: can an article's title find the article?

For a random sample of a store's articles (seeded, so reruns and other stores get the same
sample), each title is a query and a hit is any chunk of that article among the top k. Reported
per stored form: recall@1, recall@10, MRR@10 (reciprocal rank of the article's first chunk within
the top 10, 0 when absent), the sample size, and 95% confidence intervals (Wilson for recalls,
normal approximation for MRR). `against` evaluates a second store of the same source on the same
articles and adds the paired differences with their intervals: the question when re-embedding
with a fine-tuned model.

Titles are a proxy, not a benchmark: an article's opening usually repeats its title, so absolute
figures are high; what the check is good for is comparing forms, models and runs on the same text,
and catching broken vectors (recall near zero).

A check returns an `EvalResult` (each store's `StoreEval`, each form's `FormEval`); `--json` and
`eval.json` hold its `to_json()`.

Touches: the stores' data files (read), their `eval.json` and dataset card (written), the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wikiembed.card import EVAL_FILE, EVAL_METRICS, write_card
from wikiembed.compact import available_forms
from wikiembed.errors import InputError, StoreError
from wikiembed.queries import JudgedQuery, match, read_queries, store_keys
from wikiembed.results import ByMetric, Comparison, Figures, JsonRecord, StoreFigures, optional
from wikiembed.search import DEFAULT_RESCORE, Ranking, StoreVectors
from wikiembed.store_files import LOCAL, StoreSync, write_json_atomic

DEFAULT_SAMPLE = 500
DEPTH = 10  # recall@10 and MRR@10 need the top 10
Z95 = 1.959964
METRICS = EVAL_METRICS
FIGURES = (*METRICS, *(m + "_ci95" for m in METRICS))  # each metric, then each one's 95% interval


# What a check returns (and `--json` and `eval.json` hold): records whose `to_json()` is that JSON.


@dataclass(frozen=True, kw_only=True)
class FormEval(ByMetric, JsonRecord):
    """One stored form's figures in a check: how it was searched, then `metrics`' figures."""

    form: str  # a stored form (`int8`, `binary@128`), or `FORM (hamming only)`: a binary form's first stage alone
    column: str
    bytes_per_vector: int
    rescore: int | None  # a binary form's rescoring multiplier
    method: str  # index | exact
    index_note: str | None  # why the form's index was not used
    n: int
    recall_at_1: float
    recall_at_1_ci95: Any  # [low, high]
    recall_at_10: float
    recall_at_10_ci95: Any
    mrr: float
    mrr_ci95: Any
    ndcg_at_10: float
    ndcg_at_10_ci95: Any

    @classmethod
    def measured(cls, figures: Figures, **how: Any) -> "FormEval":
        """The form `how` names (form, column, bytes_per_vector, rescore, method, index_note) with `metrics`' figures."""
        return cls(**how, n=figures.n, **{m: getattr(figures, m) for m in FIGURES})


@dataclass(frozen=True, kw_only=True)
class StoreEval(ByMetric, JsonRecord):
    """One store's block of a check: the store, its first form's figures (the headline), then every form's."""

    store: str
    generation: str | None
    model: str
    chunks: int
    n: int
    recall_at_1: float
    recall_at_10: float
    mrr: float
    ndcg_at_10: float
    recall_at_1_ci95: Any
    recall_at_10_ci95: Any
    mrr_ci95: Any
    ndcg_at_10_ci95: Any
    method: str
    forms: tuple[FormEval, ...]

    def figures(self) -> StoreFigures:
        """The headline figures as the improve loop's result shows a store."""
        return StoreFigures(store=self.store, generation=self.generation, model=self.model, n=self.n,
                            **{m: getattr(self, m) for m in FIGURES})


@dataclass(frozen=True)
class EvalDifference(JsonRecord):
    """The paired differences of a check with `against`, one per form both stores hold (`Figures.form` names it)."""

    meaning: str
    forms: tuple[Figures, ...]


@dataclass(frozen=True, kw_only=True)
class EvalResult(StoreEval):
    """A check (`evaluate`: `wikiembed eval --json`, `eval.json`): the store's block, what the queries were, and with
    `against` the second store's block and the paired differences."""

    seed: int | None = optional()  # titles as queries: the seed that drew the articles
    query: str  # title | file
    queries_file: str | None = optional()  # judged queries: the file, and how it met the store(s)
    queries_read: int | None = optional()
    queries_unmatched: int | None = optional()
    relevant_missing: int | None = optional()
    hit: str  # what counts as a hit
    k: int
    against: StoreEval | None = optional()
    difference: EvalDifference | None = optional()

    def comparison(self) -> Comparison:
        """The improve loop's compare step from a check with `against` (its float32 figures)."""
        assert self.against is not None and self.difference is not None
        return Comparison(self.figures(), self.against.figures(), self.difference.forms[0])


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (sound near 0 and 1, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At 0 or n successes the interval touches the bound exactly (the formula rounds just inside it).
    return (0.0 if successes == 0 else max(0.0, centre - half), 1.0 if successes == n else min(1.0, centre + half))


def mean_interval(values: np.ndarray, bounds: tuple[float, float] = (0.0, 1.0), z: float = Z95) -> tuple[float, float]:
    """Mean ± z standard errors, kept within the values' possible range (`bounds`).

    A sample without spread (one value, or n equal ones) has a standard error of zero, yet it does not
    show that what it was drawn from has none: its interval is then the one a proportion seen 0 times in
    n gets (Clopper-Pearson, the same tail as z each side). A share up to 1 - tail^(1/n) of the
    population may differ from the value seen (0.17 at n = 20, 0.975 at n = 1), and at worst it lies at
    the far bound; so the interval is never zero wide, and one value alone spans nearly the whole range."""
    n = len(values)
    if n == 0:
        return bounds
    mean = float(values.mean())
    if float(np.ptp(values)) == 0.0:
        unseen = 1.0 - (0.5 * math.erfc(z / math.sqrt(2))) ** (1.0 / n)
        return (mean - unseen * (mean - bounds[0]), mean + unseen * (bounds[1] - mean))
    half = z * float(values.std(ddof=1)) / math.sqrt(n)
    return (max(bounds[0], mean - half), min(bounds[1], mean + half))


def sample_articles(vectors: StoreVectors, n: int, seed: int) -> list[tuple[str, str]]:
    """(id, title) of up to n articles with a non-blank title, drawn without replacement.

    Candidates are sorted by id before drawing, so the same seed picks the same articles in any
    store of the same source, whatever its sharding.
    """
    ids: list[str] = []
    titles: list[str] = []
    for batch in vectors.live_batches(["id", "title", "chunk_index"]):
        first = np.asarray(batch.column("chunk_index").to_numpy(zero_copy_only=False)) == 0
        for i, t, keep in zip(batch.column("id").to_pylist(), batch.column("title").to_pylist(), first):
            if keep and t and t.strip():
                ids.append(i)
                titles.append(t)
    if not ids:
        raise StoreError(f"store {vectors.root}: no article has a title, so titles cannot be queries; this check needs titles.")
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    picked = np.random.default_rng(seed).choice(len(ids), size=min(n, len(ids)), replace=False)
    return [(ids[order[i]], titles[order[i]]) for i in np.sort(picked)]


def judge(judged: Sequence[JudgedQuery], ranked: Sequence[Sequence[tuple[str, int]]]) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the rank (1-based) of its first relevant chunk among its ranked (id, chunk_index) keys,
    cut at DEPTH (0 when absent), and its nDCG@DEPTH.

    nDCG uses binary gains: each relevant item (an article, or one chunk) counts once, at its best rank, so
    three chunks of one relevant article are not three answers; the ideal ranks every item first."""
    ranks = np.zeros(len(judged), dtype=np.int64)
    ndcg = np.zeros(len(judged), dtype=np.float64)
    discount = 1.0 / np.log2(np.arange(2, DEPTH + 2))
    for q, query in enumerate(judged):
        credited: set[tuple[str, int | None]] = set()
        dcg = 0.0
        for r, (article_id, chunk_index) in enumerate(ranked[q][:DEPTH], 1):
            key: tuple[str, int | None] = (article_id, int(chunk_index))
            if key not in query.relevant:
                key = (article_id, None)
            if key not in query.relevant or key in credited:
                continue
            credited.add(key)
            dcg += discount[r - 1]
            if not ranks[q]:
                ranks[q] = r
        ndcg[q] = dcg / discount[: min(len(query.relevant), DEPTH)].sum()
    return ranks, ndcg


def _ranks(
    vectors: StoreVectors, judged: Sequence[JudgedQuery], queries: np.ndarray, form_name: str, rescore: int, exact: bool
) -> tuple[np.ndarray, np.ndarray, Ranking]:
    """`judge` of each query's top DEPTH in the store, and the ranking."""
    ranking = vectors.top(queries, DEPTH, vectors.form(form_name), rescore, exact=exact)
    rows = vectors.rows(ranking.positions, columns=("id", "chunk_index"))
    ranked = [[(rows[int(p)]["id"], rows[int(p)]["chunk_index"]) for p in line if p >= 0] for line in ranking.positions]
    return (*judge(judged, ranked), ranking)


def metrics(ranks: np.ndarray, ndcg: np.ndarray) -> Figures:
    """The reported figures with their 95% intervals, from `judge`'s per-query ranks and nDCG."""
    n = len(ranks)
    at1, at10 = int(np.sum(ranks == 1)), int(np.sum(ranks > 0))
    rr = np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0)
    return Figures(
        n=n,
        recall_at_1=at1 / n,
        recall_at_1_ci95=list(wilson(at1, n)),
        recall_at_10=at10 / n,
        recall_at_10_ci95=list(wilson(at10, n)),
        mrr=float(rr.mean()),
        mrr_ci95=list(mean_interval(rr)),
        ndcg_at_10=float(ndcg.mean()),
        ndcg_at_10_ci95=list(mean_interval(ndcg)),
    )


def paired_difference(mine: tuple[np.ndarray, np.ndarray], theirs: tuple[np.ndarray, np.ndarray]) -> Figures:
    """Theirs minus mine, per metric, with a 95% interval of the mean of the per-query differences
    ((ranks, ndcg) of the same queries under two stores)."""
    (a, a_ndcg), (b, b_ndcg) = mine, theirs
    per_query = {
        "recall_at_1": (b == 1).astype(float) - (a == 1).astype(float),
        "recall_at_10": (b > 0).astype(float) - (a > 0).astype(float),
        "mrr": np.where(b > 0, 1.0 / np.maximum(b, 1), 0.0) - np.where(a > 0, 1.0 / np.maximum(a, 1), 0.0),
        "ndcg_at_10": b_ndcg - a_ndcg,
    }
    return Figures(**{name: float(d.mean()) for name, d in per_query.items()},
                   **{name + "_ci95": list(mean_interval(d, (-1.0, 1.0))) for name, d in per_query.items()})


def _forms(vectors: StoreVectors, forms: Sequence[str] | None) -> list[str]:
    if not forms:
        return ["float32"]
    if list(forms) == ["all"]:
        return [f.name for f in available_forms(vectors.compact, vectors.dim)]
    for name in forms:
        vectors.form(name)  # raises with the list of forms present
    return list(dict.fromkeys(forms))


def _evaluate_store(
    vectors: StoreVectors, judged: Sequence[JudgedQuery], forms: Sequence[str], rescore: int, device: str | None,
    exact: bool,
) -> tuple[StoreEval, dict[str, tuple[np.ndarray, np.ndarray]]]:
    queries = vectors.embed_queries([q.text for q in judged], device=device)
    results: list[FormEval] = []
    ranks = {}
    for name in forms:
        form = vectors.form(name)
        *ranks[name], ranking = _ranks(vectors, judged, queries, name, rescore, exact)
        results.append(FormEval.measured(metrics(*ranks[name]), form=name, column=form.column, bytes_per_vector=form.bytes_per_vector,
                                         rescore=rescore if form.precision == "binary" else None, method=ranking.method,
                                         index_note=ranking.note))
    # Binary forms also without rescoring: what the Hamming stage alone finds.
    for r in [r for r in results if r.rescore and r.rescore > 1]:
        *plain, ranking = _ranks(vectors, judged, queries, r.form, 1, exact)
        ranks[r.form + " (hamming only)"] = tuple(plain)
        results.append(FormEval.measured(metrics(*plain), form=r.form + " (hamming only)", column=r.column,
                                         bytes_per_vector=r.bytes_per_vector, rescore=None, method=ranking.method,
                                         index_note=ranking.note))
    head = results[0]
    block = StoreEval(store=str(vectors.root), generation=vectors.store.gen, model=vectors.model_id, chunks=vectors.chunks,
                      n=head.n, **{m: getattr(head, m) for m in FIGURES}, method=head.method, forms=tuple(results))
    return block, {name: (r[0], r[1]) for name, r in ranks.items()}


def evaluate(
    store: str | Path,
    *,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    forms: Sequence[str] | None = None,
    rescore: int = DEFAULT_RESCORE,
    against: str | Path | None = None,
    device: str | None = None,
    record: bool = True,
    gen: str | None = None,
    exact: bool = False,
    queries: str | Path | Sequence[JudgedQuery] | None = None,
    against_gen: str | None = None,
    trust_remote_code: bool = False,
) -> EvalResult:
    """Evaluate a store (and optionally a second one on the same queries); return what `--json` writes.

    `queries`: a judged-queries file (see `wikiembed.queries`) or its parsed queries; without it, the
    titles of `sample` articles drawn with `seed` are the queries.
    `forms`: names of stored forms (`float32`, `int8`, `binary@128`, ...), or ["all"]; default float32.
    `record`: write the result to the generation's `eval.json` and refresh its dataset card.
    `gen`, `against_gen`: the generations to check (default: the published ones).
    `exact`: scan even where an approximate index of a form is built (see `wikiembed.search`).
    `trust_remote_code`: the stores' models may run code shipped in their folders (see `StoreVectors`).
    """
    vectors = StoreVectors(store, gen, trust_remote_code=trust_remote_code)
    names = _forms(vectors, forms)
    other = None
    if against is not None:
        other = StoreVectors(against, against_gen, trust_remote_code=trust_remote_code)
        mine, theirs = vectors.manifest.source.fingerprint or "", other.manifest.source.fingerprint or ""
        if mine != theirs:
            raise InputError(
                f"--against {other.root}: built from a different source (fingerprint {theirs[:12]} vs {mine[:12]}); "
                "compare stores embedded from the same source, so both answer the same questions."
            )
    if queries is None:
        if sample < 1:
            raise InputError(f"--sample {sample}: evaluate at least 1 article (500 gives intervals of about ±4 points).")
        judged = [JudgedQuery(title, frozenset({(article_id, None)})) for article_id, title in sample_articles(vectors, sample, seed)]
        about = dict(seed=seed, query="title", hit="any chunk of the article in the top k")
    else:
        named = str(queries) if isinstance(queries, (str, Path)) else "the queries given"
        parsed = read_queries(queries) if isinstance(queries, (str, Path)) else list(queries)
        keys = store_keys(vectors.live_batches(["id", "chunk_index"]))
        if other is not None:
            keys &= store_keys(other.live_batches(["id", "chunk_index"]))  # paired: only what both stores can answer
        matched = match(parsed, keys, f"store {vectors.root}" + (f" and {other.root}" if other else ""))
        judged = matched.queries
        about = dict(query="file", queries_file=named, queries_read=matched.read, queries_unmatched=matched.unmatched,
                     relevant_missing=matched.missing_items, hit="a relevant article or chunk in the top k")
    block, ranks = _evaluate_store(vectors, judged, names, rescore, device, exact)
    compared, difference = None, None
    if other is not None:
        other_names = _forms(other, forms)
        compared, other_ranks = _evaluate_store(other, judged, other_names, rescore, device, exact)
        diffs = tuple(paired_difference(ranks[name], other_ranks[name]).replace(form=name) for name in ranks if name in other_ranks)
        difference = EvalDifference("against minus this store, paired on the same queries", diffs)
    result = EvalResult(**{f.name: getattr(block, f.name) for f in fields(StoreEval)}, **about, k=DEPTH,
                        against=compared, difference=difference)
    if record:
        write_json_atomic(vectors.store.dir / EVAL_FILE, result.to_json())
        write_card(vectors.store.dir)
    return result


def compare_at_store(old: str, new: str, queries: str, sync: StoreSync = LOCAL) -> EvalResult:
    """The improve loop's comparison where both stores are (`modal_workers/finetune_app.py` on a Modal
    Volume): see others' commits first, then `evaluate(old, against=new)` on the judged queries
    (float32, over every chunk), recorded in neither store, so there is nothing to commit."""
    sync.reload()
    return evaluate(old, queries=queries, against=new, record=False)
