"""The README stays a short guide, and no document describes where the project was developed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Wording about the machine something was built on, rather than the hardware a figure was measured on.
DEVELOPMENT_WORDING = re.compile(
    r"original write-up|our machines?'? disk|development machine|shared 2-core|a copy to carry|GPU box|load average",
    re.IGNORECASE,
)


def _documents() -> list[Path]:
    return [ROOT / "README.md", ROOT / "Makefile", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_a_guide_of_at_most_250_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_no_document_describes_the_development_machine():
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in _documents()
             for n, line in enumerate(p.read_text().splitlines(), 1) if DEVELOPMENT_WORDING.search(line)]
    assert not found, "\n".join(found)


def test_documented_deployment_runs_with_other_chunking_use_their_own_store():
    """A sample run with other chunking into the deployment's default store is refused (one store, one
    chunking), so every documented run that changes chunking names its own store."""
    runs = [line for p in _documents() for line in p.read_text().splitlines()
            if "prefect deployment run embed-dataset/" in line and "chunking=" in line]
    assert runs, "the docs show a deployment run with other chunking"
    assert all("-p store=" in line for line in runs), "\n".join(runs)


def test_where_a_change_goes_names_files_and_tests_that_exist():
    """docs/DEVELOPMENT.md's "Where a change goes": every file it names exists, and every test it names is
    defined where it says (each of those tests makes the change it documents)."""
    text = (ROOT / "docs" / "DEVELOPMENT.md").read_text()
    section = text.split("## Where a change goes", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith(("| change", "| ---"))]
    assert len(rows) >= 4, section
    for row in rows:
        *_, tests = [cell.strip() for cell in row.strip("|").split(" | ")]
        for test in re.findall(r"`(tests/[^`]+)`", tests):
            path, _, name = test.partition("::")
            assert (ROOT / path).is_file(), test
            assert not name or re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), re.MULTILINE), test
    named = {p for p in re.findall(r"`((?:wikiembed|modal_workers|flows|tasks)/[\w/]+\.py)`", section)}
    # A new module's name in capitals (`wikiembed/sources/FORMAT.py`): the folder it goes in exists.
    missing = sorted(p for p in named if not ((ROOT / p).parent.is_dir() if Path(p).stem.isupper() else (ROOT / p).is_file()))
    assert not missing, missing
