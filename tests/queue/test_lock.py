"""memq's lease lock: exclusion across processes and hosts, stale locks, self-fencing holders.

Bounds on how long a break takes are lower bounds (never before grace, on the waiter's own clock);
how much later it comes depends on the machine's load, so the upper bounds only tell "after
grace" from "at once" or "never" (the lock's timeout)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memq.lock import LeaseLock, LockLost, Marker
from memq.spec import GridSpec, GroupSpec, JobSpec
from memq.store.sqlite import DB_FILE, LOCK_FILE, SharedSQLite
from memq.store.store import Store

from ..conftest import Processes, as_other_host
from ..waiting import until

REPO = Path(__file__).parents[2]
HAMMER = [sys.executable, "-m", "tests.queue.hammer"]


def spawn(processes: Processes, *args: str, **kw) -> subprocess.Popen:
    return processes.start([*HAMMER, *args], cwd=REPO, **kw)


@pytest.mark.parametrize("kind", ["local", "twohost"])
def test_no_lost_update_across_processes_and_hosts(kind: str, rigs, processes: Processes) -> None:
    rig = rigs(kind)
    rig.roots[0].mkdir(parents=True, exist_ok=True)
    procs = [spawn(processes, "counter", str(rig.roots[i % rig.hosts] / "lock"), str(rig.roots[i % rig.hosts] / "n"),
                   "40") for i in range(6)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 6
    assert (rig.roots[0] / "n").read_text() == "240"


def test_lock_of_a_sigkilled_holder_on_this_host_is_broken_at_once(tmp_path: Path, processes: Processes) -> None:
    lock_path = tmp_path / "lock"
    holder = spawn(processes, "hold", str(lock_path), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    grace = 30.0
    lock = LeaseLock(lock_path, grace=grace)
    start = time.monotonic()
    with lock:
        assert time.monotonic() - start < grace / 2  # not after grace: its holder provably died
    assert lock.breaks == 1


def test_a_stopped_holder_on_this_host_is_broken_after_grace(tmp_path: Path, processes: Processes) -> None:
    """A holder that is stopped (SIGSTOP, a suspended Slurm job) is alive, so not provably dead:
    its lock is broken after grace like any stale holder's."""
    lock_path = tmp_path / "lock"
    holder = spawn(processes, "hold", str(lock_path), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGSTOP)
    grace = 1.0
    lock = LeaseLock(lock_path, grace=grace, timeout=60)
    start = time.monotonic()
    with lock:
        waited = time.monotonic() - start
    assert grace <= waited < 30, waited  # (not the timeout: that raises)
    assert lock.breaks == 1


def test_foreign_lock_is_broken_only_after_grace_on_our_own_clock(tmp_path: Path) -> None:
    lock_path = tmp_path / "lock"
    # A holder on another host, whose clock is a day ahead: only our monotonic clock matters.
    foreign = Marker("elsewhere", 4242, "other-boot", "tok", time.time() + 86400).encode()
    os.symlink(foreign, lock_path)
    grace = 1.0
    lock = LeaseLock(lock_path, grace=grace, timeout=60)
    start = time.monotonic()
    lock.acquire()
    waited = time.monotonic() - start
    lock.release()
    assert grace <= waited < 30, waited
    assert lock.breaks == 1 and not lock_path.exists()


def test_a_lock_that_keeps_changing_hands_is_not_broken(tmp_path: Path) -> None:
    """Another host takes the lock again and again, each time well within grace (a twentieth of
    it, so that even a loaded machine does not hold up its thread for a whole grace)."""
    lock_path = tmp_path / "lock"
    grace = 2.0
    lock = LeaseLock(lock_path, grace=grace, timeout=2 * grace)
    deadline = time.monotonic() + 2 * grace
    seq = 0
    os.symlink(Marker("elsewhere", 1, "b", "t0", 0).encode(), lock_path)

    def other_host_reacquires() -> None:
        nonlocal seq
        while time.monotonic() < deadline:
            time.sleep(grace / 20)
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
    grace = 2.0
    lock = LeaseLock(tmp_path / "lock", grace=grace)
    with lock:
        lock.check()
        time.sleep(grace / 2 + 0.1)
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

    from memq.root import RootOptions, open_store
    from memq.store.schema import meta

    store = open_store(RootOptions(root=str(tmp_path), db_mode="shared"), create=True)  # (the default grace)
    store.backend.run(lambda conn: conn.execute(meta.insert().values(key="n", value="0")))
    grace = 0.4
    backend = SharedSQLite(tmp_path / DB_FILE, grace=grace)

    def slow_increment(conn: sa.Connection) -> None:
        conn.execute(meta.update().where(meta.c.key == "n").values(value="1"))
        time.sleep(grace / 2 + 0.1)

    with pytest.raises(LockLost), backend._transaction(write=True) as conn:
        slow_increment(conn)
    value = store.backend.run(lambda conn: conn.execute(sa.select(meta.c.value).where(meta.c.key == "n")).scalar())
    assert value == "0"
    assert not (tmp_path / "queue.db-journal").exists()


# -- two hosts --------------------------------------------------------------------------------------

def test_a_holder_killed_on_host_a_mid_transaction_is_broken_from_host_b_after_grace(
        rigs, processes: Processes, tmp_path: Path) -> None:
    """A process on mount A, under another host name, dies (SIGKILL) inside a store transaction that
    has already written into the database file. On mount B nothing can tell that it died: the store
    waits until the lock's marker has stood still for grace on its own clock, breaks it, rolls the
    hot journal back, and goes on - none of the dead transaction's changes are seen."""
    rig = rigs("twohost")
    store_a = rig.store(0)
    params = {"note": "x" * 2000}  # (a page per few jobs: the changes spill into the file)
    store_a.submit(GridSpec("g", (GroupSpec("a"),), tuple(JobSpec("g", "a", "command", {**params, "i": i},
                                                                  command=["true"]) for i in range(100))))
    ready = tmp_path / "ready"
    holder = processes.start(as_other_host("host-a", [*HAMMER, "hold_in_transaction", str(rig.roots[0]),
                                                      str(ready)]), cwd=REPO)
    until("the holder to be inside its transaction", ready.exists, timeout=120)
    b = rig.roots[1]
    assert os.readlink(b / LOCK_FILE).startswith("memq-lock:host-a:")
    assert (b / "queue.db-journal").stat().st_size > 0  # a hot journal once its holder is gone
    with contextlib.closing(sqlite3.connect(f"file:{b / DB_FILE}?immutable=1", uri=True)) as raw:
        # (a reader that ignored the journal would see the changes the dead transaction wrote)
        assert raw.execute("SELECT count(*) FROM jobs WHERE params LIKE '%dead%'").fetchone()[0] > 0
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    grace = 1.5
    store_b = Store(SharedSQLite(b / DB_FILE, grace=grace), b)
    start = time.monotonic()
    counts = store_b.counts()
    waited = time.monotonic() - start
    assert waited >= grace, waited  # never before grace: host B cannot know the holder died
    assert store_b.backend.lock.breaks == 1
    assert counts == {"g": {"queued": 100, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}}
    assert not [job for job in store_b.jobs() if "dead" in job["params"]]
    assert not (b / "queue.db-journal").exists()
    assert store_b.integrity() == []
    # and it goes on: host B claims, host A sees the claim
    from memq.store.types import Capacity

    me = store_b.register_worker("b", "host-b", 1, "boot", [], 1, 60.0)
    assert store_b.claim(me, Capacity(slots=1))[1].job_id == 1
    assert rig.store(0).counts()["g"]["running"] == 1


def test_breakers_on_two_hosts_racing_for_one_expired_lock_break_it_once(rigs, processes: Processes,
                                                                         tmp_path: Path) -> None:
    """Its holder on a third host died; four waiters (two on each mount) see it expire together.
    Exactly one breaks it; every critical section runs alone (appends to one file never
    interleave) and none is lost. A section that finds at its check that its lock was taken from
    it counts as rolled back (as a store transaction would be) and runs again."""
    rig = rigs("twohost")
    rig.roots[0].mkdir(parents=True)
    names = ["a1", "a2", "b1", "b2"]
    locks = [rig.roots[0 if name.startswith("a") else 1] / "lock" for name in names]
    os.symlink(Marker("host-c", 4242, "another-boot", "tok", time.time()).encode(), locks[0])
    shared, go = tmp_path / "sections", tmp_path / "go"
    grace = 1.5
    procs = [spawn(processes, "append", str(lock), str(grace), str(shared), name, str(go), str(tmp_path / name),
                   stdout=subprocess.PIPE, text=True) for lock, name in zip(locks, names, strict=True)]
    until("every breaker to be ready", lambda: all((tmp_path / n).exists() for n in names), timeout=120)
    began = time.time()
    go.touch()
    breaks = [int(p.communicate(timeout=120)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(names)
    assert sum(breaks) == 1, breaks
    fenced = set(shared.with_name("sections.fenced").read_text().split()) if shared.with_name(
        "sections.fenced").exists() else set()
    lines = [line.split() for line in shared.read_text().splitlines()]
    committed = [(tag, what, float(when)) for tag, what, when in lines if tag not in fenced]
    assert [what for _, what, _ in committed] == ["begin", "end"] * len(names), lines
    assert all(a[0] == b[0] for a, b in zip(committed[::2], committed[1::2], strict=True)), lines  # no interleaving
    assert sorted(tag.split(".")[0] for tag, what, _ in committed if what == "begin") == sorted(names)  # none lost
    assert committed[0][2] - began >= grace  # the first came after grace
    assert not locks[0].exists()


def test_the_two_host_rig_s_mounts_do_not_see_each_other_s_flocks(rigs) -> None:
    """What makes the rig two hosts: a flock taken through mount A does not exclude one taken through
    mount B (as between NFS clients without lock forwarding), so only memq's lease lock can."""
    import fcntl

    rig = rigs("twohost")
    rig.roots[0].mkdir(parents=True)
    (rig.roots[0] / "f").touch()
    with open(rig.roots[0] / "f") as a, open(rig.roots[1] / "f") as b:
        fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)  # would raise BlockingIOError on one host
