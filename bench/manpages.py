"""Build a real-text corpus from the manual pages installed on this machine (section 1).

Each page becomes one article: id and title = the page's name (`grep`), url = `man:grep(1)`,
text = the page rendered by `man` as plain text without its header and footer lines. A page's
name is its title, so `wikiembed eval` can ask for each page by name. Pages are picked
deterministically (every k-th name in sorted order) so a rerun on the same machine gives the same
corpus.

    python bench/manpages.py --pages 500 --out build/manpages.jsonl

Needs `man` and installed man pages (Debian: `apt-get install man-db manpages`). `--smoke` writes
three pages: rendered by `man` where it and its pages are installed, else stand-ins made from the
docstrings of Python's standard library in the shape `man` renders (a NAME line `name - what it
does`, then the text), so the rest of the script runs on any machine; it says which it used.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MAN_DIR = Path("/usr/share/man/man1")
# Plain command names only (no `CA.pl.1ssl`, `[.1`): they make sensible queries.
NAME = re.compile(r"^([a-z][a-z0-9_+-]*)\.1\.gz$")
SMOKE_PAGES = 3


def render(path: Path) -> str:
    env = dict(os.environ, MANWIDTH="100", LANG="C.UTF-8")
    out = subprocess.run(
        ["man", "--no-hyphenation", "--no-justification", "-P", "cat", "-l", str(path)],
        capture_output=True, text=True, env=env, timeout=60,
    ).stdout
    lines = out.strip().splitlines()
    return "\n".join(lines[1:-1]).strip()  # drop the "GREP(1)  User Commands  GREP(1)" header and the footer


def man_pages_here() -> bool:
    """Whether `man` and section-1 pages are installed."""
    return shutil.which("man") is not None and MAN_DIR.is_dir() and any(NAME.match(p.name) for p in MAN_DIR.iterdir())


def page_names() -> list[Path]:
    return sorted(p for p in MAN_DIR.iterdir() if NAME.match(p.name))


def stand_in_pages(n: int) -> list[tuple[str, str]]:
    """(name, text) of `n` pages in the shape `man` renders, from the docstrings of Python's standard
    library modules (read, not imported): real prose on any machine with Python."""
    pages: list[tuple[str, str]] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-z]*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError):
            continue
        lines = (doc or "").strip().splitlines()
        if len(lines) < 3 or len(doc or "") < 300 or not lines[0].strip():
            continue
        body = "\n".join(f"       {line}".rstrip() for line in lines[1:]).strip("\n")
        pages.append((path.stem, f"NAME\n       {path.stem} - {lines[0].strip().rstrip('.')}\n\nDESCRIPTION\n{body}"))
        if len(pages) == n:
            break
    return pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=500)
    parser.add_argument("--out", default="build/manpages.jsonl")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_PAGES} pages (stand-ins where man is missing)")
    args = parser.parse_args()
    pages = SMOKE_PAGES if args.smoke else args.pages
    if args.smoke and not man_pages_here():
        named, where = stand_in_pages(pages), "stand-ins from Python's docstrings (no man pages here)"
    else:
        names = page_names()
        picked = names[:: max(1, len(names) // pages)][:pages]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            texts = list(pool.map(render, picked))
        named = [(NAME.match(path.name).group(1), text) for path, text in zip(picked, texts)]  # type: ignore[union-attr]
        where = f"{len(names)} in {MAN_DIR}"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = 0
    with out.open("w", encoding="utf-8") as fh:
        for name, text in named:
            if text:
                fh.write(json.dumps({"id": name, "title": name, "url": f"man:{name}(1)", "text": text}) + "\n")
                kept += 1
    print(f"{kept} pages from {where} -> {out}")


if __name__ == "__main__":
    main()
