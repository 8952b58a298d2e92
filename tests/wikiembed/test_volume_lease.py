"""One run per Volume store: the lease in a Modal Dict (`wikiembed.volume_store.VolumeLease`).

The Dict is `tests/standins/modal_cloud.py`'s, shared by processes through a file, with
Modal's contract (atomic `put(..., skip_if_exists=True)` that says whether it wrote).
Whole runs in separate processes are in tests/flows/test_modal_fanout.py.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.standins.modal_cloud import CloudDict, CloudDir
from wikiembed.errors import StoreError
from wikiembed.volume_store import VolumeLease, _machine

STORE, KEY = "modal:wikiembed-store/wiki", "wikiembed-store/wiki"


@pytest.fixture
def locks(tmp_path: Path) -> CloudDict:
    return CloudDict(CloudDir(tmp_path / "cloud"), "wikiembed-locks", create_if_missing=True)


def test_dict_stand_in_follows_modals_contract(tmp_path: Path, locks: CloudDict) -> None:
    import modal.exception

    assert locks.put("k", {"v": 1}, skip_if_exists=True) is True
    assert locks.put("k", {"v": 2}, skip_if_exists=True) is False and locks["k"] == {"v": 1}
    assert locks.put("k", {"v": 3}) is True and locks.get("k") == {"v": 3}
    again = CloudDict(CloudDir(tmp_path / "cloud"), "wikiembed-locks")  # another handle (process) sees it
    assert "k" in again and again.pop("k") == {"v": 3} and again.get("k", "gone") == "gone"
    with pytest.raises(KeyError):
        again.pop("k")
    with pytest.raises(modal.exception.NotFoundError):
        CloudDict(CloudDir(tmp_path / "cloud"), "never-created")


def test_a_second_lease_is_refused_naming_the_holder_and_free_after_release(locks: CloudDict) -> None:
    with VolumeLease(STORE, KEY, locks=locks, lease_s=30):
        held = locks.get(KEY)
        assert held["pid"] == os.getpid() and held["expires"] > time.time() + 25
        t0 = time.monotonic()
        with pytest.raises(StoreError) as refused:
            VolumeLease(STORE, KEY, wait_s=0.5, locks=locks, lease_s=30).__enter__()
        assert time.monotonic() - t0 < 5
    message = str(refused.value)
    assert f"pid {os.getpid()}" in message and held["host"] in message and held["started"] in message
    assert "another --store" in message and "expires within" in message
    assert KEY not in locks  # released at the end
    with VolumeLease(STORE, KEY, locks=locks, lease_s=30):
        pass


def test_a_dead_holders_lease_expires_and_is_taken_over_once(locks: CloudDict) -> None:
    dead = VolumeLease(STORE, KEY, locks=locks, lease_s=1.2).__enter__()
    dead._stop.set()  # its process is gone: no more renewals, no release
    dead._beat.join()
    with pytest.raises(StoreError, match="in use"):
        VolumeLease(STORE, KEY, locks=locks, lease_s=30).__enter__()
    time.sleep(1.3)
    # A second run already claimed this dead lease (its takeover record exists): this one waits.
    locks.put(f"{KEY}#took:{dead.token}", "someone else", skip_if_exists=True)
    with pytest.raises(StoreError, match="in use"):
        VolumeLease(STORE, KEY, locks=locks, lease_s=30).__enter__()
    locks.pop(f"{KEY}#took:{dead.token}")
    with VolumeLease(STORE, KEY, locks=locks, lease_s=30) as new:
        assert locks.get(KEY)["token"] == new.token
        assert locks.get(f"{KEY}#took:{dead.token}") == new.token


def test_a_holder_that_lost_its_lease_says_so_and_leaves_the_new_one(locks: CloudDict, capsys) -> None:
    old = VolumeLease(STORE, KEY, locks=locks, lease_s=0.6).__enter__()
    # Another run took the lease over while this holder was cut off (it missed its renewals).
    locks.put(f"{KEY}#took:{old.token}", "other", skip_if_exists=True)
    locks.put(KEY, {"token": "other", "host": "elsewhere", "pid": 1, "expires": time.time() + 60})
    deadline = time.monotonic() + 10
    while old.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    old.__exit__(None, None, None)
    assert old.lost and old.lost["host"] == "elsewhere"
    assert locks.get(KEY)["token"] == "other"  # the new holder keeps it
    assert "taken by host elsewhere" in capsys.readouterr().err


def test_the_heartbeat_keeps_a_live_lease(locks: CloudDict) -> None:
    with VolumeLease(STORE, KEY, locks=locks, lease_s=0.6):
        time.sleep(1.5)  # more than two lease periods
        with pytest.raises(StoreError, match="in use"):
            VolumeLease(STORE, KEY, locks=locks, lease_s=0.6).__enter__()


def test_a_lease_of_a_dead_process_on_this_machine_is_taken_at_once(locks: CloudDict) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    locks.put(KEY, {"token": "killed", "host": "here", "machine": _machine(), "pid": gone.pid, "started": "then",
                    "expires": time.time() + 3600})  # fmt: skip
    with VolumeLease(STORE, KEY, locks=locks, lease_s=30) as new:
        assert locks.get(KEY)["token"] == new.token
    # A live process of this machine (this one) still holds its lease until it expires.
    locks.put(KEY, {"token": "alive", "machine": _machine(), "pid": os.getpid(), "expires": time.time() + 3600})
    with pytest.raises(StoreError, match="in use"):
        VolumeLease(STORE, KEY, locks=locks, lease_s=30).__enter__()
