"""Run a bench script as the GPU machine runs it: from a plain copy of the repository, with only
the Python packages that machine has.

The device tool sends the working tree (tracked files and untracked ones git does not ignore) to a
machine whose Python holds the packages in `gpu_machine_packages.txt` and nothing of this
project: no installed wikiembed, no Prefect, no Modal, no bundled model package. A script that
imports anything else fails there after a machine start, in the session's only device minutes.
Here the same script runs under this interpreter with `-S` (no site-packages, so the editable
install's finder never loads) and, as its only site-packages, a folder of links to the installed
distributions that machine has, plus those the script says it carries as wheels (its `CARRIED`).
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = Path(__file__).with_name("gpu_machine_packages.txt")

def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def plain_copy(dest: Path) -> Path:
    """What the device tool sends: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not sent
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def _requires(dist: str) -> list[str]:
    try:
        requires = metadata.requires(dist) or []
    except metadata.PackageNotFoundError:
        return []
    return [re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in requires if "extra ==" not in r]


def _closure(names: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = _key(todo.pop())
        if name not in seen:
            seen.add(name)
            todo += _requires(name)
    return seen


def gpu_machine_site(dest: Path, carried: list[str]) -> Path:
    """A site-packages folder of links to the installed distributions the GPU machine has.

    Its versions of its packages may need less than the versions installed here (this typer
    needs pydantic, that one does not), so whatever its packages need here counts as there,
    except this project's own requirements that are not on its list: those are exactly what a
    script of ours must not rely on."""
    listed = {_key(line) for line in PACKAGES.read_text().splitlines() if line.strip() and not line.startswith("#")}
    ours = {_key(name) for name in _requires("wikiembed")} - listed
    there = listed | (_closure(listed) - ours) | {_key(name) for name in carried}
    dest.mkdir(parents=True, exist_ok=True)
    for dist in metadata.distributions():
        if _key(dist.metadata["Name"]) not in there:
            continue
        base = Path(str(dist.locate_file("")))
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if (base / top).exists() and not (dest / top).exists():
                (dest / top).symlink_to(base / top)
    return dest


def command(copy: Path, script: str, args: list[str], site: Path) -> tuple[list[str], dict[str, str]]:
    """(argv, environment additions) that run `copy/script args` as the GPU machine runs it: `-S`
    keeps this interpreter's own site-packages (and the editable install's finder) away, and
    PYTHONPATH names `site` alone."""
    return [sys.executable, "-S", str(copy / script), *args], {"PYTHONPATH": str(site)}
