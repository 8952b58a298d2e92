"""Exact scan against the approximate index on a real store: latency and recall@10.

Builds the index of each form asked for (`wikiembed index`), embeds every article's title once
(the queries of `wikiembed eval`), then times the top 10 of each query alone (what `wikiembed
search` does after embedding its query) by the exact scan and by the index, taking turns query by
query so both see the same load on a shared machine, and all queries at once (what eval does).
Recall@10 is the share of the exact top 10 the index returns; top-1 the share of queries whose
first hit is the same.

    python bench/index.py --store runs/manpages --forms float32,int8,binary --json bench/results/index.json

`--smoke` needs no store: it embeds 20 sample articles (two shards) with every form (the
`embed-dataset` flow, through the Prefect API of PREFECT_API_URL where set) into a temp store and
measures a few queries, once (seconds; it checks the script, its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from wikiembed.evaluate import sample_articles
from wikiembed.index_build import build_index
from wikiembed.search import StoreVectors

K = 10
# --smoke: a store of every form, from this many sample articles, and this many queries.
SMOKE_ARTICLES = 20
SMOKE_QUERIES = 8
SMOKE_FORMS = "float32,int8,binary"


def smoke_store(folder: Path) -> str:
    """A published store of SMOKE_ARTICLES sample articles with every form, made by the embed-dataset flow."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # On a loaded machine the ephemeral API can take longer than Prefect's 20 s default to start.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from wikiembed.flows.embed_dataset import embed_dataset

    store = folder / "store"
    embed_dataset(source=f"sample:{SMOKE_ARTICLES}", store=str(store), shard_rows=SMOKE_ARTICLES // 2,
                  output={"precision": ["float32", "int8", "binary"]})  # fmt: skip
    return str(store)


def _timed(fn):  # noqa: ANN001, ANN202
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def measure(vectors: StoreVectors, queries: np.ndarray, form_name: str, repeats: int) -> dict:
    form = vectors.form(form_name)
    built = build_index(vectors.root, form_name)
    exact_s, index_s = [], []
    exact_all = vectors.top(queries, K, form, exact=True)
    for _ in range(repeats):
        for i in range(len(queries)):
            q = queries[i : i + 1]
            _, t = _timed(lambda: vectors.top(q, K, form, exact=True))
            exact_s.append(t)
            ranking, t = _timed(lambda: vectors.top(q, K, form))
            assert ranking.method == "index", ranking.note
            index_s.append(t)
    batch_exact = min(_timed(lambda: vectors.top(queries, K, form, exact=True))[1] for _ in range(repeats))
    approx, batch_index = None, float("inf")
    for _ in range(repeats):
        approx, t = _timed(lambda: vectors.top(queries, K, form))
        batch_index = min(batch_index, t)
    recall = float(np.mean([len(set(a) & set(e)) / K for a, e in zip(approx.positions, exact_all.positions)]))
    return {
        "form": form_name,
        "index_bytes": built.bytes,
        "column_bytes_raw": form.bytes_per_vector * built.rows,
        "build_seconds": built.seconds,
        "index_files": built.parts,
        "index_files_built": built.parts_built,
        "index_segments": len(built.segments),
        "metric": built.metric,
        "one_query_ms": {
            "exact_median": 1000 * statistics.median(exact_s),
            "index_median": 1000 * statistics.median(index_s),
            "exact_p90": 1000 * float(np.percentile(exact_s, 90)),
            "index_p90": 1000 * float(np.percentile(index_s, 90)),
        },
        "all_queries_s": {"exact": batch_exact, "index": batch_index},
        "recall_at_10_vs_exact": recall,
        "top1_same_as_exact": float(np.mean(approx.positions[:, 0] == exact_all.positions[:, 0])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store")
    parser.add_argument("--forms", default="float32,int8,binary")
    parser.add_argument("--queries", type=int, default=500, help="article titles drawn as queries (default 500)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--smoke", action="store_true", help="a temp store of a few articles, every form, a few queries once")
    args = parser.parse_args()
    if args.smoke:
        args.store = smoke_store(Path(tempfile.mkdtemp(prefix="wikiembed-index-")))
        args.forms, args.queries, args.repeats = SMOKE_FORMS, SMOKE_QUERIES, 1
    elif not args.store:
        parser.error("--store is required (or --smoke)")
    vectors = StoreVectors(args.store)
    titles = [t for _, t in sample_articles(vectors, args.queries, 0)]
    queries = vectors.embed_queries(titles)
    result = {
        "command": " ".join(["python", "bench/index.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other work; load average {os.getloadavg()[0]:.1f} at the start",
        "store": str(vectors.root),
        "chunks": sum(pq.ParquetFile(f).metadata.num_rows for f in vectors.files),
        "queries": len(titles),
        "k": K,
        "forms": [measure(vectors, queries, f.strip(), args.repeats) for f in args.forms.split(",") if f.strip()],
    }
    print(json.dumps(result, indent=1))
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
