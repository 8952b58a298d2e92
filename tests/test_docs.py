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
