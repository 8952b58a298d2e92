"""Every bench script runs at its smoke size, as a real subprocess, and writes what its docstring names.

A benchmark that no test runs rots: the code it calls changes under it and the next person to run
it, on a GPU machine lent for minutes, finds a traceback. So each script in bench/ has a smoke size
(`--quick` or `--smoke`: seconds, any device) and `SMOKE` below runs it here, checking that it exits
0 and that its output holds the fields its docstring names. `bench/device_check.py` runs as the GPU
machine runs it: from a plain copy of the repository, with only that machine's packages
(tests/bench/gpu_machine.py).

A new script in bench/ fails `test_every_bench_script_has_a_smoke_run` until it has an entry in
`SMOKE`: one line, `"name.py": Smoke(argv, fields)`. A key may name a variant after the script
name ("tei_client.py --flow"), so a script with two modes runs both.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
import subprocess
import sys

import pytest

from tests.bench import gpu_machine

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


@dataclass(frozen=True)
class Smoke:
    """One smoke run: the script's arguments ({out}: its output file, {work}: a scratch folder,
    {minilm}: the bundled MiniLM folder) and the fields its output must hold, not null (a dotted
    name looks inside: "shapes.decoder.min_cosine_documents"). The output is a JSON file, a folder
    with one JSON file (out="folder"), or JSON lines, every line checked (out="jsonl")."""

    argv: tuple[str, ...]
    fields: tuple[str, ...] = ()
    out: str = "json"  # json | folder | jsonl | none
    prefect: bool = False  # runs a flow: gets the test session's Prefect API
    gpu_machine: bool = False  # from a plain copy, with only the GPU machine's packages
    without_man: bool = False  # `man` not on PATH: the stand-in pages


RESULT = ("command", "date")
SMOKE = {
    "device_check.py": Smoke(
        ("{minilm}", "{out}", "--quick", "--device", "cpu"),
        (*RESULT, "device", "tokenizer_chars_per_s", "fast_tokenizer", "engine_chars_per_s.minilm", "engine_ids_chars_per_s.minilm",
         "st_fp32_chars_per_s.bge-small-shape", "min_cosine", "shapes.decoder.min_cosine_documents", "shapes.decoder.min_cosine_queries",
         "shapes.prompts.min_cosine_documents", "shapes.prompts.min_cosine_queries", "e2e.minilm.e2e_chars_per_s", "e2e_chars_per_s"),
        out="folder", gpu_machine=True),
    # The bge-small shape alone: it takes the builder's path too; device_check.py runs MiniLM through the same code.
    "engine.py": Smoke(("--smoke", "--device", "cpu", "--models", "bge-small-shape", "--json", "{out}"),
                       (*RESULT, "device", "engine_chars_per_s", "st_fp32_chars_per_s", "speedup_vs_st_fp32", "min_cosine",
                        "models.bge-small-shape.methods.engine", "models.bge-small-shape.weights")),
    "fanout.py": Smoke(("--smoke", "--json", "{out}"),
                       (*RESULT, "control_plane_shards_per_s", "shard_chars_per_s_per_core", "remote_bytes_per_shard_max",
                        "wikipedia_minutes_at_50", "wikipedia_minutes_at_100", "details.noop_resume.seconds"), prefect=True),
    "fast_tokenizer.py": Smoke(("--smoke", "--json", "{out}"),
                               (*RESULT, "hf_chars_per_s_per_core", "fast_chars_per_s_per_core", "chunker_chars_per_s_per_core",
                                "chunker_reference_chars_per_s_per_core", "identical_ids_fraction", "chunks_identical",
                                "fallback_fraction", "before_after.before", "before_after.after")),
    "finetune_memory.py": Smoke(("--smoke", "--work", "{work}", "--json", "{out}"),
                                (*RESULT, "pages", "chunks", "train", "examples", "peak_rss_mb", "cpu_s", "train_loss"), prefect=True),
    "improve_manpages.py": Smoke(("--smoke", "--work", "{work}", "--json", "{out}"),
                                 (*RESULT, "pages", "chunks", "embed_s", "loop_s", "finetune_s", "publish", "reason", "old.mrr",
                                  "new.mrr", "difference", "finetune_pool"), prefect=True),
    "index.py": Smoke(("--smoke", "--json", "{out}"),
                      (*RESULT, "chunks", "queries", "forms.0.one_query_ms", "forms.1.recall_at_10_vs_exact", "forms.2.top1_same_as_exact",
                       "forms.0.index_files"),
                      prefect=True),
    "manpages.py": Smoke(("--smoke", "--out", "{out}"), ("id", "title", "url", "text"), out="jsonl"),
    "manpages.py without man": Smoke(("--smoke", "--out", "{out}"), ("id", "title", "url", "text"), out="jsonl", without_man=True),
    "pipeline.py": Smoke(("--smoke", "--json", "{out}"),
                         (*RESULT, "overhead_ratio", "overhead_cpu_ratio", "rss_growth", "chunking_vs_tokenizer", "host_ceiling_vs_tokenizer",
                          "host_ceiling_ids_chars_per_s", "resume_s"), prefect=True),
    "report.py": Smoke(("--check",), out="none"),
    "scale.py": Smoke(("--smoke", "--json", "{out}"),
                      (*RESULT, "machine", "sizes.0.chars", "sizes.0.chunks", "sizes.0.steps.run_day1.seconds",
                       "sizes.0.steps.run_day1.peak_rss_mb", "sizes.0.steps.run_day2.bytes_written", "sizes.0.steps.export.files",
                       "sizes.0.steps.upload.hub_bytes", "sizes.0.search.index_p50_ms", "sizes.0.resume.redone",
                       "sizes.0.steps.index_day2.parts_built", "sizes.0.steps.run_day1_modal_volume.shards",
                       "sizes.0.steps.run_day1_modal_volume.commits", "sizes.0.steps.run_day1_modal_volume.call_max_bytes",
                       "incremental.changed_chunks_expected", "incremental.reembedded_chunks", "incremental.bytes_ratio"), prefect=True),
    "serve.py": Smoke(("--smoke", "--work", "{work}", "--json", "{out}"), (*RESULT, "machine", "latency.p50_ms", "throughput.ratio",
                                                                       "feedback.each_once", "publish.new"), prefect=True),
    "tei_client.py": Smoke(("--smoke", "--json", "{out}"),
                           (*RESULT, "vectors_per_s", "seed_vectors_per_s", "speedup_vs_seed", "fallback_vectors_per_s")),
    "tei_client.py --flow": Smoke(("--flow", "--smoke", "--json", "{out}"),
                                  (*RESULT, "best_chars_per_s.tokens.after", "flow_process_ceiling_chars_per_s.tokens.after",
                                   "chars_per_cpu_s.tokens.after"), prefect=True),
}


def test_every_bench_script_has_a_smoke_run():
    scripts = {p.name for p in BENCH.glob("*.py")}
    registered = {key.split()[0] for key in SMOKE}
    assert not scripts - registered, (
        f"no smoke run for {sorted(scripts - registered)}: give the script a smoke size (--smoke: seconds, any device) "
        "and add it to SMOKE in tests/bench/test_smoke.py"
    )
    assert not registered - scripts, f"SMOKE names scripts that are not in bench/: {sorted(registered - scripts)}"


def _carried() -> list[str]:
    """The distributions bench/device_check.py says it carries as wheels (its CARRIED), read without importing it."""
    tree = ast.parse((BENCH / "device_check.py").read_text())
    value = next(node.value for node in tree.body if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CARRIED")
    return [dist for dist, _ in ast.literal_eval(value)]


def _field(data, dotted: str):
    for part in dotted.split("."):
        if isinstance(data, list):
            data = data[int(part)] if part.isdigit() and int(part) < len(data) else None
        else:
            data = data.get(part) if isinstance(data, dict) else None
    return data


def _check_fields(data: dict, fields: tuple[str, ...], where: str) -> None:
    missing = [name for name in fields if _field(data, name) is None]
    assert not missing, f"{where}: no {missing} (its keys: {sorted(data)})"


# The longest smoke runs are tests of their own files (test_smoke_<part>.py, each a few lines): `make test` hands
# whole files to its xdist workers (--dist loadfile), so one file of every smoke run would keep one worker busy for
# minutes while the other ran out of files. A run not named here is a test of this file.
PART = {"scale.py": "scale", "serve.py": "loops", "improve_manpages.py": "loops", "device_check.py": "models", "engine.py": "models",
        "finetune_memory.py": "models"}


def keys_of(part: str = "") -> list[str]:
    """The SMOKE keys whose runs are tests of test_smoke_<part>.py (of this file for "")."""
    return sorted(key for key in SMOKE if PART.get(key, "") == part)


def test_every_smoke_run_is_a_test_of_one_file():
    parts = set(PART.values())
    assert all((Path(__file__).parent / f"test_smoke_{part}.py").is_file() for part in parts), parts
    assert not set(PART) - set(SMOKE), f"PART names runs that are not in SMOKE: {sorted(set(PART) - set(SMOKE))}"


@pytest.mark.slow
@pytest.mark.parametrize("key", keys_of())
def test_smoke_run(key: str, tmp_path: Path, request: pytest.FixtureRequest):
    run_smoke(key, tmp_path, request)


def run_smoke(key: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Run the smoke run `key` of SMOKE and check what it wrote."""
    smoke = SMOKE[key]
    script = key.split()[0]
    out = tmp_path / {"json": "out.json", "folder": "out", "jsonl": "out.jsonl", "none": "out"}[smoke.out]
    from wikiembed.model import DEFAULT_MODEL, resolve_model_path

    values = {"out": str(out), "work": str(tmp_path / "work"), "minilm": str(resolve_model_path(DEFAULT_MODEL))}
    args = [arg.format(**values) for arg in smoke.argv]
    env = dict(request.getfixturevalue("cli_env")) if smoke.prefect else {**os.environ, "PYTHONPATH": str(ROOT)}
    cwd = ROOT
    argv = [sys.executable, str(BENCH / script), *args]
    if smoke.gpu_machine:
        cwd = gpu_machine.plain_copy(tmp_path / "repo")
        argv, extra = gpu_machine.command(cwd, f"bench/{script}", args, gpu_machine.gpu_machine_site(tmp_path / "site", _carried()))
        env.update(extra)
    if smoke.without_man:
        (tmp_path / "bin").mkdir()
        env["PATH"] = str(tmp_path / "bin")
        assert shutil.which("man", path=env["PATH"]) is None
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(argv[1:])} exited {proc.returncode}:\n{proc.stderr[-6000:]}"
    if smoke.out == "json":
        _check_fields(json.loads(out.read_text()), smoke.fields, key)
    elif smoke.out == "folder":
        written = sorted(out.glob("*.json"))
        assert len(written) == 1, written
        _check_fields(json.loads(written[0].read_text()), smoke.fields, key)
    elif smoke.out == "jsonl":
        lines = out.read_text().splitlines()
        assert lines, f"{key}: wrote no lines"
        for line in lines:
            _check_fields(json.loads(line), smoke.fields, key)
