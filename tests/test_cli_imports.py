"""The `wikiembed` commands that need no model and run no flow start without torch, transformers or Prefect.

A `wikiembed` process pays for what it imports: torch, transformers and sentence-transformers take seconds of
CPU, Prefect about two more. status, export, index, estimate without a store's measured rate, every `--help`, a
search refused before it embeds its query and a run refused before its flow starts need none of them, so the CLI
and the modules it reads import them inside the functions that use them. One module importing torch (or a flow)
at its top undoes that for every command; this test runs the cheap commands in a fresh interpreter, as a user's
shell would, and names the first that loaded a heavy package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.wikiembed.test_publish import make_store
from wikiembed.store import Store

ROOT = Path(__file__).resolve().parents[1]
# What a cheap command must not import: the model stack, the Hub and Modal clients, the flow engine, the server.
# The training module too: every command line builds the fine-tune's options, from wikiembed.finetune_settings.
HEAVY = ("torch", "transformers", "sentence_transformers", "datasets", "huggingface_hub", "modal", "prefect", "fastapi",
         "uvicorn", "wikiembed.finetune")

# Runs each command line in turn in one interpreter (a command that loads a package shows up as the first to have
# it), printing one JSON line per command: its exit code and the heavy packages loaded by then.
_RUNNER = """
import contextlib, io, json, sys
heavy = json.loads(sys.argv[1])
from wikiembed.flows import cli
print(json.dumps({"argv": ["import wikiembed.flows.cli"], "code": 0, "loaded": [m for m in heavy if m in sys.modules]}))
for argv in json.loads(sys.argv[2]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code
    print(json.dumps({"argv": argv, "code": code, "loaded": [m for m in heavy if m in sys.modules], "stderr": err.getvalue()}))
"""


def _published_store(tmp_path: Path) -> str:
    """A store root as a run leaves it: generation g1 published through `current`."""
    generation = Store(tmp_path / "root", gen="g1")
    generation.dir.parent.mkdir(parents=True)
    make_store(tmp_path / "plain").rename(generation.dir)
    generation.set_pointer("current", "g1")
    return str(generation.root)


def test_commands_that_need_no_model_or_flow_import_neither(tmp_path: Path) -> None:
    store = _published_store(tmp_path)
    helps = [[name, "--help"] for name in ("run", "status", "rerun", "export", "upload", "estimate", "search", "index",
                                            "eval", "finetune", "improve", "serve")]
    work = [
        (["status", "--store", store], 0),
        (["status", "--store", store, "--json", "--verify"], 0),
        (["export", "--store", store, "--to", str(tmp_path / "out")], 0),
        (["upload", "--store", store, "--to", f"dir:{tmp_path / 'up'}"], 0),
        (["estimate", "--source", "sample:20", "--sample", "20", "--backend", "local", "--gpu", "CPU"], 0),
        # Refused before its query is embedded: the store holds no int8 form.
        (["search", "--store", store, "--form", "int8", "anything"], 2),
        (["index", "--store", store], 0),
        # A run refused by the checks made before its flow starts: no such model folder.
        (["run", "--source", "sample:10", "--store", str(tmp_path / "new"), "--model", str(tmp_path / "no-model")], 2),
        (["rerun", "--store", str(tmp_path / "none"), "--shards", "x"], 2),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    argv = [*helps, *(line for line, _ in work)]
    proc = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(HEAVY), json.dumps(argv)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == 1 + len(argv), proc.stdout
    expected = {tuple(line): code for line, code in work}
    for result in results:
        line = result["argv"]
        assert not result["loaded"], f"`wikiembed {' '.join(line)}` imported {result['loaded']}"
        assert result["code"] == expected.get(tuple(line), 0), f"`wikiembed {' '.join(line)}` exited {result['code']}: {result.get('stderr')}"
