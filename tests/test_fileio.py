"""Atomic writes (and the temporaries killed writers leave) and lock files shared between processes."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from autoselmatch import fileio
from autoselmatch.fileio import atomic_write, file_lock, remove_stale_temporaries, save_json

pytestmark = pytest.mark.skipif(fileio.fcntl is None, reason="no fcntl: locks and the temporary sweep are off")

HOLD_LOCK = """
import sys, time
from autoselmatch.fileio import file_lock
with file_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def temporaries(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def make_old(path: Path) -> None:
    """Back-date ``path`` past the age below which a temporary file is never removed."""
    past = time.time() - 2 * fileio.STALE_TMP_SECONDS
    os.utime(path, (past, past))


# --------------------------------------------------------------------------------------------
# file_lock
# --------------------------------------------------------------------------------------------


def test_lock_excludes_others_and_leaves_no_file(tmp_path):
    lock = tmp_path / ".thing.lock"
    with file_lock(lock) as held:
        assert held and lock.exists()
        with file_lock(lock, blocking=False) as other:  # its own open file: conflicts like another process
            assert other is False
    assert not lock.exists()
    with file_lock(lock, blocking=False) as held:
        assert held


def test_lock_held_by_a_killed_process_does_not_block(tmp_path):
    lock = tmp_path / ".thing.lock"
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with file_lock(lock, blocking=False) as held:
            assert held is False
    finally:
        child.kill()  # SIGKILL: no cleanup runs in the child
        child.wait()
    assert lock.exists()  # left behind by the dead holder...
    with file_lock(lock, blocking=False) as held:  # ...and free: the OS dropped its lock
        assert held
    assert not lock.exists()


def test_waiter_locks_the_file_that_replaced_the_one_it_waited_on(tmp_path):
    """The holder removes the lock file on release; a waiter must not end up holding the removed file."""
    lock = tmp_path / ".thing.lock"
    waiter_holds, release_waiter = threading.Event(), threading.Event()

    def waiter():
        with file_lock(lock):
            waiter_holds.set()
            release_waiter.wait(30)

    with file_lock(lock):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.2)  # the waiter is blocked on the file this holder is about to remove
        assert not waiter_holds.is_set()
    try:
        assert waiter_holds.wait(30)
        with file_lock(lock, blocking=False) as held:
            assert held is False  # the waiter's lock guards the path, not an unlinked file
    finally:
        release_waiter.set()
        thread.join()


# --------------------------------------------------------------------------------------------
# atomic_write and the temporaries of killed writers
# --------------------------------------------------------------------------------------------


def killed_writer(path: Path) -> Path:
    """Run a process that is SIGKILLed inside ``save_json(path)`` (temporary complete, not renamed)."""
    env = {**os.environ, "AUTOSELMATCH_FAULT": f"write:{path.name}:1:KILL"}
    code = "import sys; from autoselmatch.fileio import save_json; save_json({'from': 'killed'}, sys.argv[1])"
    result = subprocess.run([sys.executable, "-c", code, str(path)], env=env)
    assert result.returncode == -9
    (tmp,) = temporaries(path)
    return tmp


def test_a_killed_writers_temporary_is_removed_by_the_next_write_once_stale(tmp_path):
    path = tmp_path / "state.json"
    tmp = killed_writer(path)
    assert json.loads(tmp.read_text()) == {"from": "killed"} and not path.exists()
    save_json({"n": 1}, path)
    assert tmp.exists()  # too recent to tell from a writer that has not locked it yet
    make_old(tmp)
    save_json({"n": 2}, path)
    assert temporaries(path) == [] and json.loads(path.read_text()) == {"n": 2}


def test_a_live_writers_temporary_is_never_removed(tmp_path):
    path = tmp_path / "state.json"
    with atomic_write(path, "w") as f:
        f.write('{"writer": "slow"}\n')
        (tmp,) = temporaries(path)
        make_old(tmp)  # a writer stalled for minutes still holds its lock
        save_json({"writer": "other"}, path)
        assert remove_stale_temporaries(path) == []
        assert tmp.exists()
    assert json.loads(path.read_text()) == {"writer": "slow"} and temporaries(path) == []


def test_only_temporaries_of_the_same_file_are_swept(tmp_path):
    path = tmp_path / "state.json"
    others = [tmp_path / ".state.json.bak.abcd1234.tmp",  # a temporary of state.json.bak
              tmp_path / ".other.json.abcd1234.tmp", tmp_path / "state.json.abcd1234.tmp"]
    for other in others:
        other.write_text("x")
        make_old(other)
    stale = tmp_path / ".state.json.abcd1234.tmp"
    stale.write_text("x")
    make_old(stale)
    assert remove_stale_temporaries(path) == [stale]
    assert all(other.exists() for other in others)


def test_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    path = tmp_path / "state.json"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(path, "w") as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
