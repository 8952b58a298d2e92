"""The daily deployment's run for real: `wikiembed run --source wikimedia/wikipedia --config latest.simple`
against the loopback Hub stand-in, through the CLI, the real `datasets` loading path and the bundled model.

An unchanged newest dump (even when the repo has new commits) is a no-op; a new dump is an
incremental run that reuses every unchanged chunk.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.flows.conftest import run_cli
from tests.standins.hub_server import HubServer
from tests.standins.hub_datasets import REPO, articles, dump, hub_env, readme


def test_latest_dump_daily_runs(cli_env, tmp_path: Path) -> None:
    store, summary_path = tmp_path / "store", tmp_path / "summary.json"
    base = articles(12)
    with HubServer() as hub:
        env = {**cli_env, **hub_env(hub, tmp_path / "hf")}
        hub.push_files(REPO, {"README.md": readme(["20240101.simple", "20240201.simple"]),
                              **dump("20240101.simple", base[:8]), **dump("20240201.simple", base)})

        def run() -> dict:
            proc = run_cli(env, "run", "--source", REPO, "--config", "latest.simple", "--store", str(store),
                           "--shard-rows", "6", "--summary-json", str(summary_path))
            assert proc.returncode == 0, proc.stderr[-3000:]
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
