"""The improve loop on real text with real queries: the manual pages installed on this machine.

Each page of section 1 becomes one article without its NAME section (id and title = the page's name,
text = the rest of the page as `man` renders it), and the NAME section's description becomes the
page's query ("grep - print lines that match patterns" -> "print lines that match patterns"): a
query whose words the indexed text need not repeat. Pages are picked deterministically (every k-th
name in sorted order, of those up to --max-chars long); the run then is the `improve-model` flow
with its default 20% held out.

    python bench/improve_manpages.py --pages 300 --max-chars 4000 --work build/improve-man

writes WORK/pages.jsonl and WORK/pairs.jsonl, embeds the pages into WORK/store (the bundled model),
runs the loop into WORK/model and WORK/store-tuned, and prints the timings and the flow's result as
JSON (`pages`, `chunks`, `embed_s`, `loop_s`, `finetune_s`, `publish`, `reason`, `old`, `new`,
`difference`, `finetune_pool`), also to `--json` where given. Needs `man` and installed man pages
(Debian: `apt-get install man-db manpages`).

`--smoke` runs the whole loop on the fewest pages it takes (20 to train on, 5 held out, one epoch) cut
into 64-token chunks (the model's limit otherwise): seconds, and stand-in pages where `man` is missing
(`bench/manpages.py` says how they are made).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from manpages import NAME, man_pages_here, page_names, render, stand_in_pages  # noqa: E402

SECTION = re.compile(r"^[A-Z][A-Z ]+$")  # a section heading as `man` renders it: NAME, SYNOPSIS, ...


def split_name(text: str) -> tuple[str, str] | None:
    """(the NAME section's description, the page without its NAME section), or None without one."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "NAME")
    except StopIteration:
        return None
    end = next((i for i in range(start + 1, len(lines)) if SECTION.match(lines[i].strip())), len(lines))
    name = " ".join(line.strip() for line in lines[start + 1 : end]).strip()
    if " - " not in name:
        return None
    description = name.split(" - ", 1)[1].strip()
    rest = "\n".join(lines[:start] + lines[end:]).strip()
    return (description, rest) if description and rest else None


def candidates(n: int, stand_ins: bool) -> Iterator[tuple[str, str]]:
    """(name, rendered text) of up to `n` pages, rendered as they are asked for: every k-th installed page, or stand-ins."""
    if stand_ins:
        yield from stand_in_pages(n)
        return
    names = page_names()
    picked = names[:: max(1, len(names) // n)]
    batch = 4 * (os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for start in range(0, len(picked), batch):
            part = picked[start : start + batch]
            for path, text in zip(part, pool.map(render, part)):
                yield NAME.match(path.name).group(1), text  # type: ignore[union-attr]


def build(pages: int, max_chars: int, work: Path, stand_ins: bool = False) -> tuple[Path, Path, int]:
    work.mkdir(parents=True, exist_ok=True)
    corpus, pairs = work / "pages.jsonl", work / "pairs.jsonl"
    kept = 0
    with corpus.open("w", encoding="utf-8") as fc, pairs.open("w", encoding="utf-8") as fp:
        # Up to four candidates per page: many pages are longer than max_chars or have no NAME description.
        for name, text in candidates(pages * 4, stand_ins):
            parts = split_name(text) if text else None
            if not parts or len(parts[1]) > max_chars:
                continue
            fc.write(json.dumps({"id": name, "title": name, "url": f"man:{name}(1)", "text": parts[1]}) + "\n")
            fp.write(json.dumps({"query": parts[0], "id": name}) + "\n")
            kept += 1
            if kept == pages:
                break
    return corpus, pairs, kept


# The smallest loop the flow accepts: 20 queries to train on (its floor) and 5 held out; short chunks, so that
# the fine-tune and the comparisons, whose cost grows with each text's tokens, take seconds.
SMOKE = {"pages": 28, "max_chars": 2500, "epochs": 1, "batch_size": 8, "chunk_size": 64, "min_holdout": 5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--max-chars", type=int, default=4000)
    parser.add_argument("--work", default="build/improve-man")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, help="tokens per chunk (default: the model's limit)")
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument("--smoke", action="store_true", help=f"the whole loop on the fewest pages it takes: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update({k: v for k, v in SMOKE.items() if k != "min_holdout"})
    from wikiembed.flows.embed_dataset import embed_dataset
    from wikiembed.flows.improve_model import improve_model

    work = Path(args.work).resolve()
    stand_ins = args.smoke and not man_pages_here()
    corpus, pairs, kept = build(args.pages, args.max_chars, work, stand_ins)
    started = time.perf_counter()
    chunking = {"chunking": {"chunk_size": args.chunk_size}} if args.chunk_size else {}
    embedded = embed_dataset(source=str(corpus), store=str(work / "store"), shard_rows=50, **chunking)
    embed_s = time.perf_counter() - started
    started = time.perf_counter()
    holdout = {"min_holdout": SMOKE["min_holdout"]} if args.smoke else {}
    result = improve_model(str(work / "store"), str(pairs), str(work / "model"), str(work / "store-tuned"),
                           finetune={"epochs": args.epochs, "batch_size": args.batch_size}, **holdout)
    loop_s = time.perf_counter() - started
    out = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", "bench/improve_manpages.py", *sys.argv[1:]]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "pages": kept, "corpus": "stand-ins (no man pages here)" if stand_ins else "man pages",
           "chunks": embedded["chunks"], "embed_s": round(embed_s, 1), "loop_s": round(loop_s, 1),
           "finetune_s": round(result["finetune"]["seconds"], 1), "publish": result["publish"],
           "reason": result["reason"], "old": result["old"], "new": result["new"], "difference": result["difference"],
           "finetune_pool": {k: result["finetune"][k] for k in ("before", "after", "difference")}}  # fmt: skip
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
