"""Shared runs for the flow tests: one uninterrupted CLI run that other runs must equal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The run every interrupted / flaky run is compared with: 6 shards of 50 articles.
REFERENCE_ARGS = ["--source", "sample:300", "--shard-rows", "50"]


def run_cli(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wikiembed.flows.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def data_files(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((store / "data").iterdir())}


@pytest.fixture(scope="session")
def reference(tmp_path_factory, prefect_api):
    """(store, summary, completed process) of an uninterrupted `wikiembed run`, exported to a folder."""
    env = dict(os.environ, PREFECT_API_URL=prefect_api)
    base = tmp_path_factory.mktemp("reference")
    store, summary_path = base / "store", base / "summary.json"
    proc = run_cli(env, "run", *REFERENCE_ARGS, "--store", str(store), "--summary-json", str(summary_path),
                   "--upload-to", f"dir:{base / 'published'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return store, json.loads(summary_path.read_text()), proc
