"""What the command line prints for a user to read or paste: commands that survive copy and paste,
and output that a pipe may close early."""

from __future__ import annotations

import io
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.wikiembed.test_publish import make_store
from wikiembed.errors import StoreError
from wikiembed.flows.cli import _print_summary
from wikiembed.flows.embed_dataset import rerun_command, rerun_deployment_command
from wikiembed.publish import publish

# A path a shell would split at the space and expand at the dollar sign.
AWKWARD = "my runs/$HOME's store"


def _commands(text: str) -> list[list[str]]:
    """Each backticked command in a message, split as a POSIX shell would."""
    return [shlex.split(c) for c in re.findall(r"`([^`]+)`", text)]


def _store_arg(words: list[str]) -> str:
    return words[words.index("--store") + 1]


def test_printed_rerun_commands_quote_the_store(tmp_path: Path) -> None:
    store = str(tmp_path / AWKWARD)
    out = io.StringIO()
    _print_summary({"shards_done": 1, "shards_total": 2, "shards_failed": 1, "rows": 3, "skipped_rows": 0, "chunks": 4,
                    "embedded_chunks": 4, "reused_chunks": 0, "seconds": 1.0, "chars_per_s": 1.0,
                    "failed_shards": [1], "store": store}, out=out)
    lines = out.getvalue().splitlines()
    assert shlex.split(lines[-1]) == ["wikiembed", "rerun", "--store", store, "--failed"]
    assert _store_arg(_commands(lines[-2])[0]) == store
    assert shlex.split(rerun_command(store, "3,17")) == ["wikiembed", "rerun", "--store", store, "--shards", "3,17"]
    assert shlex.split(rerun_deployment_command(store, "failed"))[-4:] == ["-p", f"store={store}", "-p", "shards=failed"]


def test_export_refusal_commands_quote_the_store(tmp_path: Path) -> None:
    root = tmp_path / AWKWARD
    store = make_store(root, done={0}, failed=frozenset({1}))
    with pytest.raises(StoreError) as info:
        publish(store, f"dir:{tmp_path / 'out'}")
    commands = _commands(str(info.value))
    assert [c[:2] for c in commands] == [["wikiembed", "status"], ["wikiembed", "rerun"]]
    assert {_store_arg(c) for c in commands} == {str(store)}
