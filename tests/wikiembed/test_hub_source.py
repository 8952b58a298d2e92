"""The Hub source path for real: `datasets` and `huggingface_hub` against the loopback Hub stand-in.

The stand-in serves a small dataset in wikimedia/wikipedia's layout (a README whose YAML lists
`YYYYMMDD.<lang>` configs, parquet files under a folder per config). The client side runs in a
subprocess with `HF_ENDPOINT` pointed at it, because huggingface_hub and datasets read their
endpoint and offline switches when imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.standins.hub_datasets import REPO, ROOT, articles, dump, hub_env, readme
from tests.standins.hub_server import HubServer


# Runs in the subprocess: pins, fingerprints and reads, pausing (a line on stdin: the id of a
# commit the test made meanwhile) so the test can commit to the Hub between fingerprint and read.
CLIENT = r"""
import json, sys
from dataclasses import replace
from wikiembed.errors import InputError
from wikiembed.sources import RowReport, fingerprint, parse_source, pin, read_source

def out(**kw):
    print(json.dumps(kw), flush=True)

def error(spec="wikimedia/wikipedia", **kw):
    try:
        fingerprint(pin(parse_source(spec, **kw)))
    except InputError as exc:
        return str(exc)
    return None

def estimate_error(**kw):
    from wikiembed.estimate import estimate
    try:
        estimate("wikimedia/wikipedia", sample=3, **kw)
    except InputError as exc:
        return str(exc)
    return None

src = pin(parse_source("wikimedia/wikipedia", config="latest.simple"))
out(config=src.config, revision=src.revision, fp=fingerprint(src))
edited = sys.stdin.readline().strip()
rows = [r["id"] for r in read_source(src, RowReport())]
now = pin(parse_source("wikimedia/wikipedia", config="latest.simple"))
at_edit = pin(replace(parse_source("wikimedia/wikipedia", config="latest.simple"), revision=edited))
out(rows=rows, fp_again=fingerprint(src), now_revision=now.revision, now_config=now.config, fp_now=fingerprint(now),
    fp_edited=fingerprint(at_edit), now_rows=len([r for r in read_source(now, RowReport())]),
    missing_config=error(config="20990101.simple"), missing_split=error(config="20240201.simple", split="test"),
    missing_lang=error(config="latest.xx"), missing_repo=error("nobody/nothing", config="latest.simple"),
    estimate_without_metadata=estimate_error(config="latest.simple"))
"""


@pytest.mark.slow  # a subprocess that imports datasets, and a server
def test_pinned_revision_latest_config_and_errors(tmp_path: Path) -> None:
    with HubServer() as hub:
        hub.push_files(REPO, {"README.md": readme(["20240101.simple", "20240101.en"]),
                              **dump("20240101.simple", articles(4)), **dump("20240101.en", articles(3, "en"))})
        pinned = hub.push_files(REPO, {"README.md": readme(["20240101.simple", "20240101.en", "20240201.simple"]),
                                       **dump("20240201.simple", articles(6))})
        proc = subprocess.Popen([sys.executable, "-c", CLIENT], env=hub_env(hub, tmp_path / "hf"), cwd=ROOT,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.communicate(timeout=60)[1][-3000:]
        first = json.loads(line)
        # A commit lands between the fingerprint and the read: the newest dump is edited ...
        edited = hub.push_files(REPO, dump("20240201.simple", articles(6) + articles(1, "late")))
        # ... and then an unrelated one (another language's dump) lands on top.
        unrelated = hub.push_files(REPO, {"README.md": readme(["20240101.simple", "20240101.en", "20240201.simple", "20240201.en"]),
                                          **dump("20240201.en", articles(2, "en"))})
        stdout, stderr = proc.communicate(input=edited + "\n", timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    second = json.loads(stdout)

    assert first["config"] == "20240201.simple" and first["revision"] == pinned  # latest.simple -> newest dump
    # read at the fingerprinted revision: the rows of `pinned`, not those of the edit that landed since
    assert second["rows"] == [str(i) for i in range(6)] and second["fp_again"] == first["fp"]
    # the Hub moved on: the edit changes the fingerprint, the unrelated commit on top of it does not
    assert second["now_revision"] == unrelated and second["now_config"] == "20240201.simple" and second["now_rows"] == 7
    assert second["fp_now"] != first["fp"] and second["fp_now"] == second["fp_edited"]
    # errors name the bad input, what there is, and the fix
    assert "20990101.simple" in second["missing_config"] and "20240201.simple" in second["missing_config"]
    assert "--config" in second["missing_config"]
    assert "'test'" in second["missing_split"] and "train" in second["missing_split"] and "--split" in second["missing_split"]
    assert "latest.xx" in second["missing_lang"] and "simple" in second["missing_lang"] and "en" in second["missing_lang"]
    assert "nobody/nothing" in second["missing_repo"] and "no such dataset" in second["missing_repo"]
    # the estimate of a Hub source streams a sample and takes the row count from the dataset's metadata (the
    # reader's `estimate_sample`, at the pinned commit); this card has none
    assert "no split 'train' in its metadata" in second["estimate_without_metadata"]
