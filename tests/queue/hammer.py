"""Subprocess bodies for the multi-process tests (run as `python -m tests.queue.hammer MODE ...`)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def counter(lock_path: str, counter_path: str, n: int) -> None:
    """Increment a plain file counter n times, each read-modify-write under the lease lock."""
    from memq.lock import LeaseLock

    lock = LeaseLock(lock_path)
    for _ in range(n):
        with lock:
            path = Path(counter_path)
            value = int(path.read_text() or "0") if path.exists() else 0
            path.write_text(str(value + 1))
            lock.check()


def hold(lock_path: str) -> None:
    """Take the lock, say so, and hang on to it until killed."""
    from memq.lock import LeaseLock

    LeaseLock(lock_path).acquire()
    print("held", flush=True)
    time.sleep(3600)


def claim(root: str, db: str, mode: str, name: str, out: str, go: str = "", batch: str = "1") -> None:
    """Claim and succeed jobs until none is left, ``batch`` per transaction (each transaction also
    records the previous batch's ends); record every claim. With ``go``: say `OUT.ready` once set
    up, and start claiming when the file ``go`` exists."""
    from memq.root import RootOptions, open_store
    from memq.store.types import Capacity, Outcome

    store = open_store(RootOptions(root=root, db=db or None, db_mode=mode or None), create=False)
    me = store.register_worker(name, "hammer", os.getpid(), "boot", [], 1, 60.0)
    if go:
        Path(f"{out}.ready").touch()
        while not os.path.exists(go):
            time.sleep(0.005)
    done: list[Outcome] = []
    claims: list[list[int]] = []
    while True:
        accepted, got = store.claim_many(me, Capacity(slots=1), done, int(batch))
        assert all(accepted)
        if not got:
            break
        claims += [[c.job_id, c.attempt] for c in got]
        done = [Outcome(c.job_id, c.attempt, "succeeded") for c in got]
        time.sleep(0.002)  # the jobs' work (on two cores a claimer that never sleeps can starve the rest)
    Path(out).write_text(json.dumps(claims))


def submit(root: str, db: str, mode: str, n: str, out: str) -> None:
    from memq.root import RootOptions, open_store
    from memq.spec import GridSpec, GroupSpec, JobSpec

    jobs = tuple(JobSpec("same", "g", "command", {"i": i}, command=["true"]) for i in range(int(n)))
    store = open_store(RootOptions(root=root, db=db or None, db_mode=mode or None), create=True)
    Path(out).write_text(str(store.submit(GridSpec("same", (GroupSpec("g"),), jobs)).added))


if __name__ == "__main__":
    {"counter": lambda *a: counter(a[0], a[1], int(a[2])), "hold": hold, "claim": claim, "submit": submit}[
        sys.argv[1]](*sys.argv[2:])
