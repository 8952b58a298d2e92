"""Benchmark: the fast tokenizing path against `tokenizers`, per core, on real text, in one run.

What it may touch: one CPU core (everything runs in this process, single-threaded), the text
sources below (read), and the `--json` file.

Text: the built-in sample (`--sample N` articles) plus, where given, man pages rendered by
`bench/manpages.py` (`--manpages build/manpages.jsonl`). Each article is cut into the segments the
token chunker tokenizes (at most ~50k characters, at line breaks).

Measured (characters / CPU seconds of this single-threaded process, best of `--repeats`, the runs
alternating; CPU time, because on a shared machine other load stretches wall time unevenly):

- `hf_chars_per_s_per_core`: `tokenizers` `encode_batch` of the segments (no special tokens), one
  thread: what the token chunker called before.
- `fast_chars_per_s_per_core`: `wikiembed.fast_tokenizer` on the same segments (ids and character
  offsets; runs it cannot prove go through `tokenizers`, included in the time).
- `chunker_chars_per_s_per_core`: the whole token chunker (`chunk_texts`, 256-token chunks, offsets,
  paragraph/sentence boundaries, ids with special tokens) on the fast path, in this process;
  `chunker_reference_chars_per_s_per_core`: the same with `tokenizers` only.
- `identical_ids_fraction`: segments whose fast ids and offsets equal `tokenizers`' (must be 1.0);
  `chunks_identical`: whether both chunkers gave the same chunks, ids included.
- `fallback_fraction`: characters the fast path left to `tokenizers`.

    python bench/fast_tokenizer.py --json bench/results/fast-tokenizer.json --manpages build/manpages.jsonl

With `--before-after`, also the figures the fast path should raise elsewhere, each with tokenizers
only (before) and with the fast path (after), alternating, twice, in this run: `bench/fanout.py`'s
`shard_chars_per_s_per_core` (its data plane: whole shards through `wikiembed.store_ops.run_shard`
against the TEI stand-in, 6,000 sample articles) and `bench/pipeline.py`'s `chunking_vs_tokenizer`
(the token chunker on every core against `tokenizers` on every core, 1,000 sample articles).

Target: `chunker_chars_per_s_per_core` >= 3x `hf_chars_per_s_per_core`.

`--smoke`: every part, `--before-after` included (one round, a few shards), on a few dozen sample
articles, one repeat: seconds; it checks the script, its figures mean nothing.

(Not `bench/tokenize.py`: a script's folder comes first on the import path, so a `tokenize.py` in
bench/ would stand in for the standard `tokenize` module, which `inspect` and `linecache` import,
in every bench script.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core: tokenizers' own thread pool off


def _texts(sample: int, manpages: str | None) -> list[str]:
    from wikiembed.sample import generate_articles

    texts = [a["text"] for a in generate_articles(sample)]
    if manpages:
        with open(manpages, encoding="utf-8") as fh:
            texts += [json.loads(line)["text"] for line in fh]
    return texts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, help="write the results here")
    p.add_argument("--sample", type=int, default=3000, help="built-in sample articles (default 3,000: ~3.4M characters)")
    p.add_argument("--manpages", help="a jsonl of man pages from bench/manpages.py (optional)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--before-after", action="store_true", help="also fanout's and pipeline's figures, before and after")
    p.add_argument("--smoke", action="store_true", help="every part on a few dozen articles, one repeat: checks the script")
    args = p.parse_args()
    if args.smoke:
        args.sample, args.repeats, args.before_after = 30, 1, True

    import numpy as np

    from wikiembed.chunkers import _groups, _segments
    from wikiembed.chunking import Chunking, chunk_texts
    from wikiembed.fast_tokenizer import CHOICE_ENV, fast_wordpiece
    from wikiembed.model import load_tokenizer

    tokenizer = load_tokenizer()
    fast = fast_wordpiece(tokenizer, "auto")
    if fast is None:
        sys.exit("the fast path does not apply here (blingfire missing or unloadable?)")
    texts = _texts(args.sample, args.manpages)
    # The chunker's unit of tokenizing: segments, in its groups.
    pieces = [(t, s, e) for t, text in enumerate(texts) for s, e in _segments(text)]
    groups = [[texts[t][s:e] for t, s, e in group] for group in _groups(pieces)]
    chars = sum(map(len, texts))
    chunking = Chunking("tokens", 256, 0)

    def hf() -> list:
        return [enc for group in groups for enc in tokenizer.encode_batch(group, add_special_tokens=False)]

    def fast_path() -> list:
        return [enc for group in groups for enc in fast.encode_batch(group)]

    def chunker(which: str):  # noqa: ANN202
        os.environ[CHOICE_ENV] = which
        try:
            return chunk_texts(texts, chunking, tokenizer, workers=1)
        finally:
            del os.environ[CHOICE_ENV]

    best = {"hf": float("inf"), "fast": float("inf"), "chunker": float("inf"), "chunker_reference": float("inf")}
    runs = {
        "hf": hf,
        "fast": fast_path,
        "chunker": lambda: chunker("auto"),
        "chunker_reference": lambda: chunker("tokenizers"),
    }
    out: dict = {}
    started = time.perf_counter()
    load_before = os.getloadavg()
    for _ in range(args.repeats):  # alternating, best of each: other load only ever slows a run down
        for name, fn in runs.items():
            if name == "fast":
                fast.chars = fast.fallback_chars = 0
            t0 = time.process_time()
            out[name] = fn()
            best[name] = min(best[name], time.process_time() - t0)
            if name == "fast":
                fallback = fast.fallback_chars / max(fast.chars, 1)

    same = sum(
        f.ids.tolist() == h.ids and list(zip(f.starts.tolist(), f.ends.tolist())) == h.offsets
        for f, h in zip(out["fast"], out["hf"])
    )
    a, b = out["chunker"], out["chunker_reference"]
    chunks_identical = all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("counts", "starts", "ends", "ids", "id_offsets"))
    import blingfire
    import tokenizers

    results = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python bench/fast_tokenizer.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "text": f"sample:{args.sample}" + (f" + {args.manpages}" if args.manpages else ""),
        "articles": len(texts),
        "segments": len(pieces),
        "chars": chars,
        "hf_chars_per_s_per_core": chars / best["hf"],
        "fast_chars_per_s_per_core": chars / best["fast"],
        "chunker_chars_per_s_per_core": chars / best["chunker"],
        "chunker_reference_chars_per_s_per_core": chars / best["chunker_reference"],
        "chunker_vs_hf": best["hf"] / best["chunker"],
        "chunker_vs_chunker_reference": best["chunker_reference"] / best["chunker"],
        "identical_ids_fraction": same / len(pieces),
        "chunks_identical": bool(chunks_identical),
        "fallback_fraction": fallback,
        "repeats": args.repeats,
        "versions": {"tokenizers": tokenizers.__version__, "blingfire": blingfire.get_blingfiretok_version()},
        "bench_seconds": time.perf_counter() - started,
        "load_avg_at_start": [round(x, 2) for x in load_before],
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],  # other work on a shared machine
        "targets": {"chunker_vs_hf": ">= 3", "identical_ids_fraction": "== 1.0"},
    }
    if args.before_after:
        results["before_after"] = before_after(**(BEFORE_AFTER_SMOKE if args.smoke else BEFORE_AFTER))
        results["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(results, indent=1)
    print(text)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(text + "\n")
    if results["identical_ids_fraction"] != 1.0 or not chunks_identical:
        sys.exit("the fast path gave different ids or chunks: see the figures above")


def _bench_module(name: str):  # noqa: ANN202
    """bench/<name>.py, loaded by path (bench/ is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"wikiembed_bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# Sizes of the --before-after runs: fanout's data plane (articles, shard rows), pipeline's chunking
# figure (articles), and the rounds of (tokenizers only, fast path).
BEFORE_AFTER = {"articles": 6000, "shard_rows": 2000, "chunking_articles": 1000, "rounds": 2}
BEFORE_AFTER_SMOKE = {"articles": 40, "shard_rows": 20, "chunking_articles": 20, "rounds": 1}


def before_after(articles: int, shard_rows: int, chunking_articles: int, rounds: int) -> dict:
    """fanout's shard rate per core and pipeline's chunking figure, tokenizers only then the fast path, `rounds` times."""
    import tempfile

    from wikiembed.fast_tokenizer import CHOICE_ENV

    fanout, pipeline = _bench_module("fanout"), _bench_module("pipeline")
    os.environ.pop("TOKENIZERS_PARALLELISM", None)  # these figures use every core, as their own benches do
    out: dict = {"before": [], "after": []}
    for which in ("tokenizers", "auto") * rounds:
        os.environ[CHOICE_ENV] = which
        with tempfile.TemporaryDirectory(prefix="wikiembed-fast-tokenizer-") as work:
            shards = fanout.data_plane(Path(work), articles, shard_rows)
        chunking = pipeline.chunking_vs_tokenizer(chunking_articles, repeats=2)
        row = {
            "shard_chars_per_s_per_core": shards["chars_per_s_per_core"],
            "chunker_share_of_shard_cpu": shards["chunker_share_of_cpu"],
            "chunking_vs_tokenizer": round(chunking["chunking_vs_tokenizer"], 3),
            "chunker_chars_per_s": round(chunking["chunker_chars_per_s"]),
            "load_avg": [round(x, 2) for x in os.getloadavg()],
        }
        out["before" if which == "tokenizers" else "after"].append(row)
        print(which, row, flush=True)
    del os.environ[CHOICE_ENV]
    return out


if __name__ == "__main__":
    main()
