"""`--tokenizer`: the run says which tokenizer cut its chunks, and either choice stores the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.flows.conftest import REFERENCE_ARGS, cli_here, data_files
from wikiembed.fast_tokenizer import CHOICE_ENV


def test_tokenizer_choice_is_reported_and_changes_no_byte(reference, tmp_path, capsys, monkeypatch):
    ref_store, ref_summary, ref_proc = reference
    assert ref_summary["tokenizer"] == "blingfire"  # the default where the fast path applies
    assert "tokens counted by blingfire" in ref_proc.stdout
    store, summary_path = tmp_path / "store", tmp_path / "summary.json"
    # The run makes its choice its process's (its worker processes inherit it): this test's, restored after.
    monkeypatch.setenv(CHOICE_ENV, "auto")
    proc = cli_here(capsys, "run", *REFERENCE_ARGS, "--store", str(store), "--tokenizer", "tokenizers",
                    "--summary-json", str(summary_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["tokenizer"] == "tokenizers" and "tokens counted by tokenizers" in proc.stdout
    assert summary["chunks"] == ref_summary["chunks"]
    assert _chunk_files(store) and _chunk_files(store) == _chunk_files(ref_store)
    assert data_files(store) == data_files(ref_store)


def _chunk_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.glob("gens/*/chunks/*.parquet"))}
