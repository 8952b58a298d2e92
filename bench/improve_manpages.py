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
JSON. Needs `man` and installed man pages (Debian: `apt-get install man-db manpages`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from manpages import MAN_DIR, NAME, render  # noqa: E402

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


def build(pages: int, max_chars: int, work: Path) -> tuple[Path, Path, int]:
    names = sorted(p for p in MAN_DIR.iterdir() if NAME.match(p.name))
    # Four candidates per page wanted: many pages are longer than max_chars or have no NAME description.
    picked = names[:: max(1, len(names) // (pages * 4))]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        texts = list(pool.map(render, picked))
    work.mkdir(parents=True, exist_ok=True)
    corpus, pairs = work / "pages.jsonl", work / "pairs.jsonl"
    kept = 0
    with corpus.open("w", encoding="utf-8") as fc, pairs.open("w", encoding="utf-8") as fp:
        for path, text in zip(picked, texts):
            parts = split_name(text) if text else None
            if not parts or len(parts[1]) > max_chars or kept >= pages:
                continue
            name = NAME.match(path.name).group(1)  # type: ignore[union-attr]
            fc.write(json.dumps({"id": name, "title": name, "url": f"man:{name}(1)", "text": parts[1]}) + "\n")
            fp.write(json.dumps({"query": parts[0], "id": name}) + "\n")
            kept += 1
    return corpus, pairs, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--max-chars", type=int, default=4000)
    parser.add_argument("--work", default="build/improve-man")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    from wikiembed.flows.embed_dataset import embed_dataset
    from wikiembed.flows.improve_model import improve_model

    work = Path(args.work).resolve()
    corpus, pairs, kept = build(args.pages, args.max_chars, work)
    started = time.perf_counter()
    embedded = embed_dataset(source=str(corpus), store=str(work / "store"), shard_rows=50)
    embed_s = time.perf_counter() - started
    started = time.perf_counter()
    result = improve_model(str(work / "store"), str(pairs), str(work / "model"), str(work / "store-tuned"),
                           finetune={"epochs": args.epochs, "batch_size": args.batch_size})
    loop_s = time.perf_counter() - started
    print(json.dumps({"pages": kept, "chunks": embedded["chunks"], "embed_s": round(embed_s, 1), "loop_s": round(loop_s, 1),
                      "finetune_s": round(result["finetune"]["seconds"], 1), "publish": result["publish"],
                      "reason": result["reason"], "old": result["old"], "new": result["new"],
                      "difference": result["difference"], "finetune_pool": {k: result["finetune"][k] for k in ("before", "after", "difference")}},
                     indent=1))


if __name__ == "__main__":
    main()
