"""Tokenizing on worker processes: flat ids, order, and the fallback when the pool cannot run."""

from __future__ import annotations

import os

import pytest

from wikiembed.model import load_tokenizer
from wikiembed.tokenizing import encode_ids, encode_ids_part, run_parts, spec

TEXTS = ["Hello world.", "", "café 東京 🙂", "The river crosses the park. " * 20, "a"]


def test_encode_ids_is_flat_and_matches_the_tokenizer():
    tokenizer = load_tokenizer()
    ids, offsets = encode_ids(tokenizer, TEXTS)
    want = [e.ids for e in tokenizer.encode_batch(TEXTS)]
    assert ids.dtype.name == "int32" and offsets.tolist()[0] == 0 and len(offsets) == len(TEXTS) + 1
    assert [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == want


def test_worker_processes_return_parts_in_order():
    tokenizer_spec = spec(load_tokenizer())
    parts = [(tokenizer_spec, "auto", [text]) for text in TEXTS] * 3
    got = list(run_parts(encode_ids_part, parts, workers=2))
    want = [encode_ids(load_tokenizer(), [text]) for text in TEXTS] * 3
    assert [g[0].tolist() for g in got] == [w[0].tolist() for w in want]


def _double_unless_in_a_worker(parent_pid: int, x: int) -> int:
    if os.getpid() != parent_pid:
        os._exit(3)  # a worker dies: the pool breaks
    return 2 * x


def test_a_broken_pool_falls_back_to_this_process_with_a_warning():
    with pytest.warns(UserWarning, match="tokenizing in this process instead"):
        got = list(run_parts(_double_unless_in_a_worker, [(os.getpid(), i) for i in range(6)], workers=2))
    assert got == [0, 2, 4, 6, 8, 10]
    # The next call starts a fresh pool.
    assert [len(o) - 1 for _, o in run_parts(encode_ids_part, [(spec(load_tokenizer()), "auto", TEXTS)], workers=2)] == [5]


def test_workers_leave_when_their_parent_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import time\n"
        "from wikiembed import tokenizing\n"
        "from wikiembed.model import load_tokenizer\n"
        "if __name__ == '__main__':\n"
        "    parts = [(tokenizing.spec(load_tokenizer()), 'auto', ['hello'])] * 4\n"
        "    list(tokenizing.run_parts(tokenizing.encode_ids_part, parts, workers=2))\n"
        "    print(*tokenizing._POOL.executor._processes, flush=True)\n"
        "    time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2
    finally:
        parent.send_signal(signal.SIGKILL)  # no cleanup runs in the parent
        parent.wait()
    deadline = time.monotonic() + 30
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in workers if os.path.exists(f"/proc/{pid}") and "Z" not in _state(pid)]
    assert not alive, f"worker processes {alive} outlived their killed parent"


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
