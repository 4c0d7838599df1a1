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


def append(lock_path: str, grace: str, shared_file: str, name: str, go: str, ready: str) -> None:
    """One critical section under the lease lock, once the file ``go`` exists: append ``NAME begin``,
    wait a little, append ``NAME end``, check the lock, release. A section whose check fails (the
    lock was taken from it) is what a store transaction would roll back: it is said in
    ``SHARED_FILE.fenced`` and run again. Says on stdout how many locks it broke."""
    from memq.lock import LeaseLock, LockLost

    lock = LeaseLock(lock_path, grace=float(grace))
    lock._dir()  # (the directory is opened before the race starts)
    Path(ready).touch()
    while not os.path.exists(go):
        time.sleep(0.002)
    for tries in range(1, 100):
        tag = f"{name}.{tries}"
        with lock:
            with open(shared_file, "a") as fh:
                fh.write(f"{tag} begin {time.time()}\n")
            time.sleep(0.05)
            with open(shared_file, "a") as fh:
                fh.write(f"{tag} end {time.time()}\n")
            try:
                lock.check()
            except LockLost:
                with open(f"{shared_file}.fenced", "a") as fh:
                    fh.write(f"{tag}\n")
                continue
        break
    print(lock.breaks, flush=True)


def hold_in_transaction(root: str, ready: str) -> None:
    """Open the store in ROOT and, inside a write transaction that has already written part of its
    changes into the database file (a hot journal beside it; the changed params are spilled, the
    rest may stay in memory), say so and hang on until killed."""
    from memq.store.sqlite import DB_FILE, SharedSQLite

    backend = SharedSQLite(Path(root) / DB_FILE)
    with backend._transaction(write=True) as conn:
        conn.exec_driver_sql("PRAGMA cache_size=1")  # spill the changed pages into the file before commit
        conn.exec_driver_sql("PRAGMA cache_spill=1")
        conn.exec_driver_sql("UPDATE jobs SET state = 'cancelled', params = json_set(params, '$.dead', 1)")
        Path(ready).touch()
        time.sleep(3600)


def txlog(log_path: str, *args: str) -> None:
    """Run `memq ARGS...` with every store transaction logged to LOG_PATH, one line each:
    ``<epoch seconds> <r|w> <the transaction's function>``. memq is not changed: this wraps
    ``Backend.run``, which every transaction of every backend goes through."""
    from memq.store.backend import Backend

    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    original = Backend.run

    def run(self, fn, *, write=True):  # type: ignore[no-untyped-def]
        try:
            return original(self, fn, write=write)
        finally:
            log.write(f"{time.time():.6f} {'w' if write else 'r'} {getattr(fn, '__qualname__', repr(fn))}\n")

    Backend.run = run  # type: ignore[method-assign]
    from memq.cli import main

    sys.argv = ["memq", *args]
    main()


if __name__ == "__main__":
    {"counter": lambda *a: counter(a[0], a[1], int(a[2])), "hold": hold, "claim": claim, "submit": submit,
     "append": append, "hold_in_transaction": hold_in_transaction, "txlog": txlog}[sys.argv[1]](*sys.argv[2:])
