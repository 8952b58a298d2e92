"""`wikiembed search`, `index` and `eval`: the commands that read a store's vectors where they run.
"""

from __future__ import annotations

import argparse
import sys

from wikiembed.flows.commands.base import EXIT_OK, Command, always, check_writable, write_json


def _search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True)
    parser.add_argument("query", help="the text to search for")
    parser.add_argument("-k", type=int, default=10, help="hits to return (default 10)")
    parser.add_argument("--form", default="float32", help="stored form to search: float32 (default), float16, int8, binary, or e.g. int8@128")
    parser.add_argument("--rescore", type=int, default=4, help="binary: rescore k x this many Hamming candidates with the float query (1: off)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="where the query is embedded")
    parser.add_argument("--exact", action="store_true", help="scan every vector even where an index of the form is built")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the store's model run code shipped in its folder (auto_map), as its run was allowed to; only for models you trust")
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="also write the hits as JSON here")


def _cmd_search(args: argparse.Namespace) -> int:
    from wikiembed.search import search

    result = search(args.store, args.query, args.k, form=args.form, rescore=args.rescore, device=args.device, exact=args.exact,
                    trust_remote_code=args.trust_remote_code)
    write_json(args.json_path, result)  # before printing: a reader that leaves early cannot cost the file
    if result.index_note:
        print(f"wikiembed search: warning: {result.index_note}", file=sys.stderr)
    how = "approximate index" if result.method == "index" else "exact scan"
    print(f"{len(result.hits)} hits for {args.query!r} in {result.chunks_searched:,} chunks ({result.form}, {how}, {result.model})")
    for rank, hit in enumerate(result.hits, 1):
        snippet = " ".join(hit.text.split())[:160]
        print(f"{rank:>3}. {hit.score:.4f}  {hit.title}  {hit.url}  [chunk {hit.chunk_index}, chars {hit.char_start}-{hit.char_end}]")
        print(f"     {snippet}")
    return EXIT_OK


def _index_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True)
    parser.add_argument("--form", default="float32", help="stored form to index: float32 (default), float16, int8, binary, or e.g. int8@128")
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="also write what was built as JSON here")


def _cmd_index(args: argparse.Namespace) -> int:
    from wikiembed.index_build import build_index

    result = build_index(args.store, args.form)
    write_json(args.json_path, result.to_json())  # before printing: a reader that leaves early cannot cost the file
    print(f"index of {result.form} ({result.metric}, {result.scalar}) over {result.rows:,} vectors in "
          f"{result.parts} data files, {len(result.segments)} segments: {result.parts_built} files indexed "
          f"({result.rows_built:,} rows, {result.segments_built} segments built, {result.segments_merged} merged) "
          f"in {result.seconds:.1f}s, {result.parts_reused} kept in {result.segments_reused} segments reused; "
          f"{result.bytes / 1e6:,.1f} MB in all, this generation's in {result.path} ({result.library})")
    for path in result.removed_older_layout:
        print(f"removed {path} (the older layout: one graph for a whole generation)")
    return EXIT_OK


def _check_index_outputs(args: argparse.Namespace) -> None:
    from wikiembed.store_location import locate

    if not locate(args.store).files_here:
        return
    from wikiembed.store import Store

    store = Store.at(args.store)
    if store.gen is not None and store.dir.is_dir():
        check_writable(store.dir, "--store", args.store, why="the index is written into the store")


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True)
    parser.add_argument("--queries", metavar="FILE", help="jsonl or parquet: \"query\" with its relevant \"id\", \"ids\" or \"id\" + "
                        "\"chunk_index\" (default: titles of --sample articles)")
    parser.add_argument("--sample", type=int, default=500, help="articles drawn at random (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--forms", default="float32", help="stored forms to check, comma-separated, or all (default float32)")
    parser.add_argument("--rescore", type=int, default=4, help="binary: rescoring multiplier (1: Hamming only)")
    parser.add_argument("--against", help="a second store of the same source, checked on the same articles")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="where the queries are embedded")
    parser.add_argument("--no-record", action="store_true", help="do not write eval.json and the dataset card")
    parser.add_argument("--exact", action="store_true", help="scan every vector even where an index of a form is built")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the stores' models run code shipped in their folders (auto_map), as their runs were allowed to; only for models you trust")
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="also write the result as JSON here")


def _cmd_eval(args: argparse.Namespace) -> int:
    from wikiembed.evaluate import METRICS, evaluate

    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    result = evaluate(args.store, sample=args.sample, seed=args.seed, forms=forms, rescore=args.rescore,
                      against=args.against, device=args.device, record=not args.no_record, exact=args.exact,
                      queries=args.queries, trust_remote_code=args.trust_remote_code)
    write_json(args.json_path, result)  # before printing: a reader that leaves early cannot cost the file
    if result.queries_unmatched:
        print(f"wikiembed eval: warning: {result.queries_unmatched} of {result.queries_read} queries name no article "
              f"or chunk of the store ({result.relevant_missing} relevant items missing); they are left out", file=sys.stderr)
    asked = "judged queries" if result.query == "file" else "titles as queries"
    blocks = [("", result), *([("against ", result.against)] if result.against else [])]
    for note in sorted({f.index_note for _, block in blocks for f in block.forms if f.index_note}):
        print(f"wikiembed eval: warning: {note}", file=sys.stderr)
    for label, block in blocks:
        print(f"{label}{block.store} ({block.model}, {block.chunks:,} chunks): {block.n} {asked}")
        print(f"  {'form':<28} {'bytes':>6}  {'recall@1':<22} {'recall@10':<22} {'MRR@10':<22} {'nDCG@10':<22} search")
        for f in block.forms:
            cells = [f"{f.value(m):.3f} [{f.interval(m)[0]:.3f}, {f.interval(m)[1]:.3f}]" for m in METRICS]
            print(f"  {f.form:<28} {f.bytes_per_vector:>6}  {cells[0]:<22} {cells[1]:<22} {cells[2]:<22} {cells[3]:<22} {f.method}")
    for d in result.difference.forms if result.difference else ():
        print(f"  difference ({d.form}, against - store): " + ", ".join(
            f"{m} {d.value(m):+.3f} [{d.interval(m)[0]:+.3f}, {d.interval(m)[1]:+.3f}]" for m in ("recall_at_10", "mrr", "ndcg_at_10")))
    return EXIT_OK


SEARCH = Command(
    "search",
    "the chunks of a store nearest to a query (its index where built, else an exact scan)",
    _search_arguments,
    _cmd_search,
    quiet_downloads=True,
    reads_vectors=always,
)


INDEX = Command(
    "index",
    "build an approximate index of a stored form, used by search and eval (needs wikiembed[index])",
    _index_arguments,
    _cmd_index,
    reads_vectors=always,
    check_outputs=_check_index_outputs,
)


EVAL = Command(
    "eval",
    "retrieval check on your judged queries (--queries), else titles as queries: recall, MRR, nDCG",
    _eval_arguments,
    _cmd_eval,
    quiet_downloads=True,
    reads_vectors=always,
)
