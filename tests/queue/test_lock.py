"""memq's lease lock: exclusion across processes and hosts, stale locks, self-fencing holders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memq.lock import LeaseLock, LockLost, Marker

from ..conftest import make_rig

REPO = Path(__file__).parents[2]


def spawn(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.queue.hammer", *args], cwd=REPO, **kw)


@pytest.mark.parametrize("kind", ["local", "twohost"])
def test_no_lost_update_across_processes_and_hosts(kind: str, tmp_path: Path) -> None:
    rig = make_rig(kind, tmp_path)
    try:
        for root in rig.roots:
            root.mkdir(parents=True, exist_ok=True)
        procs = [spawn("counter", str(rig.roots[i % rig.hosts] / "lock"), str(rig.roots[i % rig.hosts] / "n"), "40")
                 for i in range(6)]
        assert [p.wait(timeout=300) for p in procs] == [0] * 6
        assert (rig.roots[0] / "n").read_text() == "240"
    finally:
        for fn in rig.cleanup:
            fn()


def test_lock_of_a_sigkilled_holder_on_this_host_is_broken_at_once(tmp_path: Path) -> None:
    lock_path = tmp_path / "lock"
    holder = spawn("hold", str(lock_path), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    lock = LeaseLock(lock_path, grace=30)
    start = time.monotonic()
    with lock:
        assert time.monotonic() - start < 5
    assert lock.breaks == 1


def test_a_stopped_holder_on_this_host_is_broken_after_grace(tmp_path: Path) -> None:
    """A holder that is stopped (SIGSTOP, a suspended Slurm job) is alive, so not provably dead:
    its lock is broken after grace like any stale holder's."""
    lock_path = tmp_path / "lock"
    holder = spawn("hold", str(lock_path), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)
        lock = LeaseLock(lock_path, grace=1.0)
        start = time.monotonic()
        with lock:
            waited = time.monotonic() - start
        assert 1.0 <= waited < 5, waited
        assert lock.breaks == 1
    finally:
        holder.kill()
        holder.wait()


def test_foreign_lock_is_broken_only_after_grace_on_our_own_clock(tmp_path: Path) -> None:
    lock_path = tmp_path / "lock"
    # A holder on another host, whose clock is a day ahead: only our monotonic clock matters.
    foreign = Marker("elsewhere", 4242, "other-boot", "tok", time.time() + 86400).encode()
    os.symlink(foreign, lock_path)
    lock = LeaseLock(lock_path, grace=1.0)
    start = time.monotonic()
    lock.acquire()
    waited = time.monotonic() - start
    lock.release()
    assert 1.0 <= waited < 5, waited
    assert lock.breaks == 1 and not lock_path.exists()


def test_a_lock_that_keeps_changing_hands_is_not_broken(tmp_path: Path) -> None:
    lock_path = tmp_path / "lock"
    lock = LeaseLock(lock_path, grace=1.0, timeout=2.5)
    deadline = time.monotonic() + 2.5
    seq = 0
    os.symlink(Marker("elsewhere", 1, "b", "t0", 0).encode(), lock_path)

    def other_host_reacquires() -> None:
        nonlocal seq
        while time.monotonic() < deadline:
            time.sleep(0.3)
            seq += 1
            tmp = tmp_path / f"new{seq}"
            os.symlink(Marker("elsewhere", 1, "b", f"t{seq}", 0).encode(), tmp)
            os.replace(tmp, lock_path)

    import threading

    thread = threading.Thread(target=other_host_reacquires)
    thread.start()
    from memq.lock import LockError

    with pytest.raises(LockError, match="still held"):
        lock.acquire()
    thread.join()
    assert lock.breaks == 0


def test_holder_stalled_past_half_grace_fences_itself(tmp_path: Path) -> None:
    lock = LeaseLock(tmp_path / "lock", grace=0.4)
    with lock:
        lock.check()
        time.sleep(0.25)
        with pytest.raises(LockLost, match="past grace/2"):
            lock.check()


def test_holder_whose_lock_was_broken_fences_itself(tmp_path: Path) -> None:
    lock = LeaseLock(tmp_path / "lock", grace=30)
    lock.acquire()
    os.unlink(tmp_path / "lock")
    os.symlink(Marker("elsewhere", 1, "b", "x", 0).encode(), tmp_path / "lock")
    with pytest.raises(LockLost, match="broken"):
        lock.check()
    lock.release()  # must not remove the other holder's lock
    assert os.readlink(tmp_path / "lock").startswith("memq-lock:elsewhere")


def test_stalled_store_transaction_rolls_back(tmp_path: Path) -> None:
    """A shared-mode transaction whose holder stalls past grace/2 commits nothing."""
    import sqlalchemy as sa

    from memq.store.backends import SharedSQLite
    from memq.store.schema import meta, metadata

    backend = SharedSQLite(tmp_path / "queue.db", grace=0.4)
    backend.run(lambda conn: metadata.create_all(conn))
    backend.run(lambda conn: conn.execute(meta.insert().values(key="n", value="0")))

    def slow_increment(conn: sa.Connection) -> None:
        conn.execute(meta.update().where(meta.c.key == "n").values(value="1"))
        time.sleep(0.3)

    with pytest.raises(LockLost), backend._transaction(write=True) as conn:
        slow_increment(conn)
    value = backend.run(lambda conn: conn.execute(sa.select(meta.c.value).where(meta.c.key == "n")).scalar())
    assert value == "0"
    assert not (tmp_path / "queue.db-journal").exists()
