"""The `wikiembed` CLI: the documented contract (its main in the test process) and bad input (real subprocesses).
SIGKILL + resume: test_reliability.py (five kills in a row, each resumed by a new process, then the output equals
an uninterrupted run's and no finished shard was redone)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.flows.conftest import cli_here

ROOT = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = {
    "shards_total", "shards_done", "shards_failed", "rows", "skipped_rows",
    "chunks", "embedded_chunks", "reused_chunks", "seconds", "chars_per_s",
}


def _run(cmd, env, *args, timeout=600):
    return subprocess.run([*cmd, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_run_prints_progress_and_writes_the_summary_contract(reference):
    store, summary, proc = reference
    assert SUMMARY_KEYS <= set(summary)
    assert summary["shards_total"] == summary["shards_done"] == 6 and summary["shards_failed"] == 0
    assert "6/6 shards" in proc.stderr  # the progress bar
    assert "6/6 shards done" in proc.stdout  # the final summary line


def test_status_json_contract(reference, capsys):
    store, summary, _ = reference
    proc = cli_here(capsys, "status", "--store", str(store), "--json")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert (status["done"], status["failed"], status["pending"]) == (6, 0, 0)
    assert {"shard", "state", "rows", "chunks", "error"} <= set(status["shards"][0])
    assert sum(s["chunks"] for s in status["shards"]) == summary["chunks"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["run", "--source", "/no/such/file.parquet"], "no such file"),
        (["run", "--source", "sample:abc"], "sample:N"),
        (["run", "--source", "sample:10", "--chunk-size", "100000"], "max sequence length"),
        (["run", "--source", "sample:10", "--model", "/no/such/model"], "model"),
        (["status"], "no run was started"),
        (["rerun", "--shards", "x,y"], "--shards"),
    ],
)
def test_bad_input_gets_one_clear_message(args, needle, tmp_path, cli_env, wikiembed_cmd):
    proc = _run(wikiembed_cmd, cli_env, *args[:1], "--store", str(tmp_path / "s"), *args[1:])
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_export_writes_a_folder_datasets_loads(reference, tmp_path, capsys):
    import datasets

    store, summary, _ = reference
    proc = cli_here(capsys, "export", "--store", str(store), "--to", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    ds = datasets.load_dataset(str(tmp_path / "out"), split="train")
    assert ds.num_rows == summary["chunks"] and ds.features["embedding"].length == 384
    bad = cli_here(capsys, "upload", "--store", str(store), "--to", "ftp:somewhere")
    assert bad.returncode == 2 and "hub:" in bad.stderr and "Traceback" not in bad.stderr


def test_run_without_a_source_says_it_embeds_the_built_in_sample(tmp_path, capsys, prefect_api):
    proc = cli_here(capsys, "run", "--limit", "3", "--store", str(tmp_path / "store"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no --source given: embedding the built-in sample (sample:1000)" in proc.stderr
    assert json.loads(cli_here(capsys, "status", "--store", str(tmp_path / "store"), "--json").stdout)["source"] == "sample:1000"
    given = cli_here(capsys, "run", "--source", "sample:3", "--store", str(tmp_path / "other"))
    assert given.returncode == 0 and "no --source" not in given.stderr


def test_a_source_format_is_one_reader_registered_then_run_reads_it(tmp_path, capsys, prefect_api):
    """What docs/DEVELOPMENT.md says a source format takes, done here: one reader (a `SourceReader` that says
    which `--source` it takes and reads its raw rows), registered; `wikiembed run --source` then reads it."""
    import csv

    import pyarrow.parquet as pq

    from wikiembed import sources
    from wikiembed.sources.base import SourceReader, batched, data_files

    class CsvReader(SourceReader):
        kind = "csv"
        file_hint = ".csv"
        folder_label = "CSV files"

        def takes_file(self, path):
            return path.suffix.lower() == ".csv"

        def folder_files(self, folder):
            return data_files(folder, ("*.csv",))

        def batches(self, source, report):
            def rows():
                for f in self.files(source):
                    with f.open(newline="", encoding="utf-8") as fh:
                        yield from csv.DictReader(fh)
            return batched(rows())

    articles = [{"id": f"a{i}", "url": f"https://example.org/{i}", "title": f"Article {i}",
                 "text": f"Paragraph {i}, with a comma. " * (5 + i)} for i in range(12)]
    path = tmp_path / "articles.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "url", "title", "text"])
        writer.writeheader()
        writer.writerows(articles)
    refused = cli_here(capsys, "run", "--source", str(path), "--store", str(tmp_path / "refused"))
    assert refused.returncode != 0 and "unsupported file type '.csv'" in refused.stderr
    sources.register(CsvReader())
    try:
        proc = cli_here(capsys, "run", "--source", str(path), "--store", str(tmp_path / "store"), "--shard-rows", "5")
    finally:
        sources.unregister("csv")
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = json.loads(cli_here(capsys, "status", "--store", str(tmp_path / "store"), "--json").stdout)
    assert status["source"] == str(path)
    [snapshot] = (tmp_path / "store").rglob("snapshot/source.parquet")
    assert pq.read_table(snapshot).to_pylist() == articles
    [manifest] = [json.loads(p.read_text()) for p in (tmp_path / "store").rglob("manifest.json") if "gens" in p.parts]
    assert manifest["source"]["kind"] == "csv"
