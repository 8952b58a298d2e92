"""The daily deployment's run for real: `wikiembed run --source wikimedia/wikipedia --config latest.simple`
against the loopback Hub stand-in, through the CLI, the real `datasets` loading path and the bundled model.

An unchanged newest dump (even when the repo has new commits) is a no-op; a new dump is an
incremental run that reuses every unchanged chunk.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.flows.conftest import ROOT
from tests.standins.hub_server import HubServer
from tests.standins.hub_datasets import REPO, articles, dump, hub_env, readme

# Runs in a process of its own, whose environment points huggingface_hub and datasets at the Hub stand-in (they
# read it when imported): the CLI's main once per line on stdin (the run's arguments), each exit code back on
# stdout. One process for the three days' runs, the test pushing the next dump to the Hub between them.
DAYS = r"""
import json, os, sys
from wikiembed.flows.cli import main

answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # what the runs print goes to stderr, never into the answers
for line in sys.stdin:
    print(json.dumps(main(json.loads(line))), file=answers, flush=True)
"""


@contextlib.contextmanager
def _cli_process(env: dict[str, str], err: Path) -> Iterator[Callable[..., int | None]]:
    """Yields `run(*args)`: `wikiembed ARGS` in the process DAYS runs, its exit code (None if the process died)."""
    with open(err, "a") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", DAYS], env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=stderr, text=True)

    def run(*args: str) -> int | None:
        proc.stdin.write(json.dumps(args) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        return int(line) if line.strip() else None

    try:
        yield run
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_latest_dump_daily_runs(cli_env, tmp_path: Path) -> None:
    store, summary_path, err = tmp_path / "store", tmp_path / "summary.json", tmp_path / "runs.err"
    base = articles(12)
    with HubServer() as hub:
        env = {**cli_env, **hub_env(hub, tmp_path / "hf")}
        hub.push_files(REPO, {"README.md": readme(["20240101.simple", "20240201.simple"]),
                              **dump("20240101.simple", base[:8]), **dump("20240201.simple", base)})
        with _cli_process(env, err) as cli:

            def run() -> dict:
                code = cli("run", "--source", REPO, "--config", "latest.simple", "--store", str(store), "--shard-rows", "6",
                           "--summary-json", str(summary_path))
                assert code == 0, err.read_text()[-3000:]
                return json.loads(summary_path.read_text())

            first = run()
            manifest = json.loads((store / "manifest.json").read_text())
            assert first["shards_done"] == 2 and first["embedded_chunks"] == first["chunks"]
            revision = hub.repos[REPO].heads["main"]
            assert manifest["source"]["config"] == "20240201.simple" and manifest["source"]["revision"] == revision
            assert manifest["settings"]["config"] == "latest.simple"  # what the deployment asks for, kept for reruns
            card = (store / "README.md").read_text()
            assert f"revision: `{revision}`" in card and "config 20240201.simple" in card

            # Another language's dump lands: the newest simple dump is unchanged, so nothing to do.
            hub.push_files(REPO, {"README.md": readme(["20240101.simple", "20240201.simple", "20240201.en"]),
                                  **dump("20240201.en", articles(3, "en"))})
            same = run()
            assert same["embedded_chunks"] == 0 and same["generation"] == first["generation"]

            # A new simple dump: one article edited, one added; everything else is reused.
            newer = [dict(a) for a in base] + articles(1, "new")
            newer[3]["text"] += "\n\nA closing paragraph about a new bridge."
            hub.push_files(REPO, {"README.md": readme(["20240101.simple", "20240201.simple", "20240201.en", "20240301.simple"]),
                                  **dump("20240301.simple", newer)})
            daily = run()
    assert daily["generation"] != first["generation"] and daily["shards_done"] == daily["shards_total"]
    assert daily["changes"] == {"added": 1, "edited": 1, "removed": 0}
    # unchanged articles stay in the first version's files; the edited one's unchanged chunks are reused
    assert daily["kept_chunks"] + daily["reused_chunks"] >= first["chunks"] - 2 and 0 < daily["embedded_chunks"] <= 3
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["source"]["config"] == "20240301.simple"
