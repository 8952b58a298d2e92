"""wikiembed/atomic.py is the one writer of files: temp names, what a killed writer leaves, and its cleanup."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wikiembed import atomic
from wikiembed.errors import InputError
from wikiembed.store import Store

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("wikiembed", "flows", "tasks", "modal_workers")


def _store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store", "g1")
    store.dir.mkdir(parents=True)
    store.set_pointer("current", "g1")
    return store


def _renames(path: Path) -> list[str]:
    """Calls in `path` that rename a file: os.replace/os.rename/os.renames/shutil.move, and `.rename(x)` or
    `.replace(x)` with one positional argument (Path's; str.replace takes two, a record's `replace` keywords)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        name = node.func.attr
        if (owner == "os" and name in ("replace", "rename", "renames")) or (owner == "shutil" and name == "move") \
                or (name in ("rename", "replace") and len(node.args) == 1 and not node.keywords):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_but_atomic_renames_a_file():
    found = [hit for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
             if path != ROOT / "wikiembed" / "atomic.py" for hit in _renames(path)]
    assert not found, "rename files through wikiembed/atomic.py:\n" + "\n".join(found)
    assert _renames(ROOT / "wikiembed" / "atomic.py")  # the check does see a rename


WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from wikiembed.atomic import atomic_path
    paths = [Path(p) for p in sys.argv[1:]]

    def write(rest):
        if not rest:
            print(os.getpid(), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of every write
        with atomic_path(rest[0]) as tmp:
            tmp.write_bytes(b"half a file")
            write(rest[1:])

    write(paths)
""")


def test_a_killed_writer_leaves_temp_files_that_clean_temp_files_removes_everywhere(tmp_path):
    store = _store(tmp_path)
    dests = [store.data_path(0), store.chunks_path(0), store.snapshot_path, store.done_path(0), store.dir / "keys" / "00000.npz",
             store.dir / "index" / "embedding" / "00000.usearch", store.dir / "articles.parquet"]
    killed = subprocess.run([sys.executable, "-c", WRITER, *map(str, dests)], capture_output=True, text=True, cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    pid = int(killed.stdout)
    left = sorted(store.dir.rglob(f".*.tmp-{pid}"))
    assert left == sorted(d.with_name(f".{d.name}.tmp-{pid}") for d in dests)
    assert not any(d.exists() for d in dests)
    os.symlink("gens/g1", store.root / f".next.tmp-{pid}")  # a link switch killed before its rename
    assert store.clean_temp_files() == len(dests) + 1
    assert not list(store.root.rglob(".*.tmp-*")) and not (store.root / f".next.tmp-{pid}").is_symlink()
    assert store.pointer("current") == "g1"


def test_cleanup_leaves_live_writers_and_never_follows_a_link(tmp_path):
    store = _store(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / ".00000.parquet.tmp-999999999"
    victim.write_bytes(b"not the store's")
    (store.dir / "index").mkdir()
    os.symlink(outside, store.dir / "index" / "embedding")  # a linked folder: never descended into
    os.symlink(victim, store.dir / "data.tmp")  # not a temp name: left alone
    (store.dir / "data").mkdir()
    os.symlink(victim, store.dir / "data" / ".00001.parquet.tmp-999999999")  # a temp name that is a link: the link goes
    live = store.dir / "data" / f".00002.parquet.tmp-{os.getppid()}"  # another process that is alive
    live.write_bytes(b"being written")
    with atomic.atomic_path(store.data_path(3)) as mine:
        mine.write_bytes(b"this process is writing it")
        assert store.clean_temp_files() == 1
        assert mine.exists() and live.exists() and victim.read_bytes() == b"not the store's"
    assert store.data_path(3).read_bytes() == b"this process is writing it"
    assert not (store.dir / "data" / ".00001.parquet.tmp-999999999").is_symlink()


def test_cleanup_and_removal_refuse_a_linked_generation_folder(tmp_path):
    store = _store(tmp_path)
    real = tmp_path / "elsewhere"
    real.mkdir()
    (real / ".00000.parquet.tmp-999999999").write_bytes(b"x")
    os.symlink(real, store.dir / "data")
    with pytest.raises(InputError, match="symbolic link"):
        store.forget(0)
    (store.dir / "data").unlink()
    os.rename(store.dir, tmp_path / "moved")
    os.symlink(tmp_path / "moved", store.dir)
    with pytest.raises(InputError, match="symbolic link"):
        store.clean_temp_files()


def test_an_interrupted_streaming_writer_leaves_nothing_and_a_stop_removes_what_is_being_written(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest = tmp_path / "gens" / "g" / "data" / "00000.parquet"
    schema = pa.schema([("x", pa.int64())])
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_path(dest) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            writer.write_table(pa.table({"x": [1, 2]}))
            raise KeyboardInterrupt
    assert not list(dest.parent.iterdir())
    with atomic.atomic_path(dest) as tmp:
        tmp.write_bytes(b"partial")
        atomic.remove_unfinished()  # what the CLI's Ctrl-C handler calls before it exits
        assert not tmp.exists()
        tmp.write_bytes(b"whole")
    assert dest.read_bytes() == b"whole"


def test_a_folder_is_built_under_a_temp_name_and_stale_ones_go_first(tmp_path):
    out = tmp_path / "model"
    stale = tmp_path / ".model.tmp-999999999"
    (stale / "sub").mkdir(parents=True)
    other = tmp_path / ".other.tmp-999999999"
    other.mkdir()
    tmp = atomic.begin_dir(out)
    assert tmp == atomic.temp_path(out) and not stale.exists() and other.exists()
    (tmp / "weights").write_bytes(b"w")
    atomic.finish_dir(tmp, out)
    assert (out / "weights").read_bytes() == b"w" and not tmp.exists()


def test_a_link_is_switched_in_one_rename(tmp_path):
    link = tmp_path / "current"
    atomic.replace_link(link, "gens/a")
    atomic.replace_link(link, "gens/b")
    assert os.readlink(link) == "gens/b" and sorted(p.name for p in tmp_path.iterdir()) == ["current"]
