"""docs/PERFORMANCE.md is exactly what bench/report.py makes of bench/results/*.json."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_checked_in_performance_doc_equals_the_scripts_output():
    proc = subprocess.run([sys.executable, "bench/report.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = (ROOT / "docs" / "PERFORMANCE.md").read_text()
    for path in sorted((ROOT / "bench" / "results").glob("*.json")):
        assert f"(../bench/results/{path.name})" in text, f"{path.name} has no row"


def test_every_row_names_its_command_date_and_hardware():
    rows = [line for line in _report().render().splitlines() if line.startswith("| ") and not line.startswith(("| figure", "| ---"))]
    assert rows
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        figure, measured, _target, date, hardware, command = cells[:6]
        assert figure and measured and hardware and command.startswith("`"), row
        assert len(date) == 10 and date[4] == date[7] == "-", row


def test_a_result_without_its_command_or_of_an_unknown_kind_is_refused_by_name(tmp_path):
    report = _report()
    (tmp_path / "a.json").write_text(json.dumps({"date": "2026-01-01", "machine": "x", "shards_total": 1}))
    with pytest.raises(SystemExit, match=r"a\.json: no command"):
        report.render(tmp_path)
    (tmp_path / "a.json").write_text(json.dumps({"date": "2026-01-01", "machine": "x", "command": "c", "something": 1}))
    with pytest.raises(SystemExit, match=r"a\.json: no section of bench/report.py"):
        report.render(tmp_path)


def test_a_command_that_does_not_run_here_is_refused_and_setup_comes_first(tmp_path):
    report = _report()
    base = {"date": "2026-01-01", "machine": "x", "shards_total": 1, "chunks": 1, "rows": 1, "shards_done": 1, "seconds": 1.0,
            "chars_per_s": 1.0, "retries": 0}
    (tmp_path / "a.json").write_text(json.dumps({**base, "command": "python bench/gone.py --json a.json"}))
    with pytest.raises(SystemExit, match=r"a\.json: command 'python bench/gone.py --json a.json' is not"):
        report.render(tmp_path)
    (tmp_path / "a.json").write_text(json.dumps({**base, "command": "wikiembed run --source c.jsonl", "setup": ["make corpus"]}))
    with pytest.raises(SystemExit, match=r"a\.json: command 'make corpus' is not"):
        report.render(tmp_path)
    (tmp_path / "a.json").write_text(json.dumps({**base, "command": "wikiembed run --source c.jsonl",
                                                 "setup": ["python bench/manpages.py --out c.jsonl"]}))
    assert "`python bench/manpages.py --out c.jsonl`, then `wikiembed run --source c.jsonl`" in report.render(tmp_path)
