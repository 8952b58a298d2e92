"""Build a real-text corpus from the manual pages installed on this machine (section 1).

Each page becomes one article: id and title = the page's name (`grep`), url = `man:grep(1)`,
text = the page rendered by `man` as plain text without its header and footer lines. A page's
name is its title, so `wikiembed eval` can ask for each page by name. Pages are picked
deterministically (every k-th name in sorted order) so a rerun on the same machine gives the same
corpus.

    python bench/manpages.py --pages 500 --out build/manpages.jsonl

Needs `man` and installed man pages (Debian: `apt-get install man-db manpages`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MAN_DIR = Path("/usr/share/man/man1")
# Plain command names only (no `CA.pl.1ssl`, `[.1`): they make sensible queries.
NAME = re.compile(r"^([a-z][a-z0-9_+-]*)\.1\.gz$")


def render(path: Path) -> str:
    env = dict(os.environ, MANWIDTH="100", LANG="C.UTF-8")
    out = subprocess.run(
        ["man", "--no-hyphenation", "--no-justification", "-P", "cat", "-l", str(path)],
        capture_output=True, text=True, env=env, timeout=60,
    ).stdout
    lines = out.strip().splitlines()
    return "\n".join(lines[1:-1]).strip()  # drop the "GREP(1)  User Commands  GREP(1)" header and the footer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=500)
    parser.add_argument("--out", default="build/manpages.jsonl")
    args = parser.parse_args()
    names = sorted(p for p in MAN_DIR.iterdir() if NAME.match(p.name))
    step = max(1, len(names) // args.pages)
    picked = names[::step][: args.pages]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        texts = list(pool.map(render, picked))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = 0
    with out.open("w", encoding="utf-8") as fh:
        for path, text in zip(picked, texts):
            name = NAME.match(path.name).group(1)  # type: ignore[union-attr]
            if text:
                fh.write(json.dumps({"id": name, "title": name, "url": f"man:{name}(1)", "text": text}) + "\n")
                kept += 1
    print(f"{kept} pages from {len(names)} in {MAN_DIR} -> {out}")


if __name__ == "__main__":
    main()
