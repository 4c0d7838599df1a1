"""Benchmark child processes: one claim -> finish loop each, all started at the same instant.

Run as ``python bench/_loops.py SPEC.json``. The spec names the loop (``memq``, ``plain``, ``optuna``,
``huey``) and three files: ``ready`` (written once the process has imported everything and opened
its queue), ``go`` (written by the parent once every child is ready; it holds the wall-clock start
time all children wait for) and ``out`` (the result: what this process claimed, when it stopped,
the errors it saw). Interpreter start-up and opening the queue are therefore outside the timing.

Each loop does what its system's own worker does for one job, no more:

* ``memq``: ``Store.claim_many(worker, capacity, done, n)`` - record the jobs that ended and claim
  the next ones in one transaction, as many as ``memq.claim_ahead.ClaimAhead`` allows for the jobs'
  run time (what ``memq.worker.loop.Worker._exchange`` does; ``claim_ahead`` 0: one job at a time).
* ``plain``: SQLite without memq - rollback journal (DELETE), synchronous=FULL, a fresh connection
  per transaction, ``BEGIN IMMEDIATE``, the same finish + claim in one transaction. SQLite's own
  locks are its only protection, so on two sshfs mounts it is expected to break.
* ``pgplain``: PostgreSQL without memq - psycopg, a kept connection, the same finish + claim
  (``FOR UPDATE SKIP LOCKED``) in one transaction: what the server and disk allow here.
* ``optuna``: Optuna's own queue: trials enqueued as WAITING, a worker pops one by setting it
  RUNNING through the journal (``Study._pop_waiting_trial_id``: the append is taken under the
  journal's lock and the replay decides who won), then sets it COMPLETE (``Study.tell``).
* ``huey``: ``huey.dequeue()`` then ``huey.execute(task)`` (the task returns a value, so huey
  stores a result: the equivalent of recording success) - ``huey.consumer.Worker.loop`` without its
  idle sleep.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent


def _write_json(path: str, value: Any) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(value))
    os.replace(tmp, path)


def barrier(spec: dict[str, Any]) -> float:
    """Say we are ready, wait for the parent's go file, then for the start time it names."""
    _write_json(spec["ready"], {"pid": os.getpid()})
    go = Path(spec["go"])
    deadline = time.monotonic() + spec.get("barrier_timeout", 600)
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("barrier: no go file")
        time.sleep(0.001)
    start = float(go.read_text())
    while time.time() < start:
        time.sleep(min(0.001, max(start - time.time(), 0)))
    _CPU["start"] = time.process_time()
    return start


_CPU: dict[str, float] = {}


# -- memq ----------------------------------------------------------------------------------------


def memq_loop(spec: dict[str, Any]) -> dict[str, Any]:
    from memq.claim_ahead import WINDOW, ClaimAhead
    from memq.options import RootOptions
    from memq.root import open_store
    from memq.store.types import Capacity, Outcome

    store = open_store(RootOptions(root=spec["root"], db=spec.get("db"), db_mode=spec.get("mode")), create=False)
    me = store.register_worker(spec["name"], "bench", os.getpid(), "bench", [], 1, 600.0)
    capacity = Capacity(slots=1)
    pace = ClaimAhead(spec.get("claim_ahead", WINDOW))
    start = barrier(spec)

    def loop() -> list[list[int]]:
        claims: list[list[int]] = []
        done: list[Outcome] = []
        while True:
            _, got = store.claim_many(me, capacity, done, pace.batch())
            if not got:
                return claims
            done = []
            for claim in got:  # each job: nothing, timed like the worker times its jobs
                began = time.monotonic()
                claims.append([claim.job_id, claim.attempt])
                pace.ran(time.monotonic() - began)
                done.append(Outcome(claim.job_id, claim.attempt, "succeeded"))

    claims = _maybe_profiled(spec, loop)
    end = time.time()
    lock = getattr(store.backend, "lock", None)
    store.backend.dispose()
    return {"start": start, "end": end, "claims": claims, "breaks": getattr(lock, "breaks", 0)}


# -- plain SQLite, no memq -----------------------------------------------------------------------

PLAIN_SCHEMA = ("CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT NOT NULL, worker TEXT, "
                "finishes INTEGER NOT NULL DEFAULT 0)",
                "CREATE INDEX ix_jobs_state ON jobs (state, id)")


def plain_create(path: str, n: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    for stmt in PLAIN_SCHEMA:
        conn.execute(stmt)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO jobs (id, state) VALUES (?, 'queued')", [(i,) for i in range(1, n + 1)])
    conn.execute("COMMIT")
    conn.close()


def plain_verify(path: str) -> dict[str, Any]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        integrity = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        states = dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
        finishes = conn.execute("SELECT coalesce(sum(finishes), 0) FROM jobs").fetchone()[0]
    except sqlite3.Error as exc:
        return {"integrity": [f"unreadable: {exc}"], "states": {}, "finishes": None}
    finally:
        conn.close()
    return {"integrity": integrity, "states": states, "finishes": finishes}


def plain_loop(spec: dict[str, Any]) -> dict[str, Any]:
    path, name = spec["path"], spec["name"]
    time_limit = spec.get("time_limit", 120.0)
    errors: Counter[str] = Counter()
    start = barrier(spec)

    def transaction(done: int | None) -> int | None:
        """finish `done` and claim the next job in one transaction; retried on errors."""
        delay = 0.001
        for _ in range(400):
            try:
                conn = sqlite3.connect(path, timeout=60, isolation_level=None)
                try:
                    conn.execute("PRAGMA synchronous=FULL")
                    conn.execute("BEGIN IMMEDIATE")
                    if done is not None:
                        conn.execute("UPDATE jobs SET state='succeeded', finishes=finishes+1 WHERE id=?", (done,))
                    row = conn.execute(
                        "UPDATE jobs SET state='running', worker=? WHERE id=(SELECT id FROM jobs "
                        "WHERE state='queued' ORDER BY id LIMIT 1) RETURNING id", (name,)).fetchone()
                    conn.execute("COMMIT")
                    return None if row is None else int(row[0])
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                errors[str(exc)] += 1
                if time.time() - start > time_limit:
                    raise TimeoutError from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        raise RuntimeError("plain SQLite: 400 errors in a row")

    claims: list[list[int]] = []
    gave_up = None
    done: int | None = None
    try:
        while True:
            job = transaction(done)
            if job is None:
                break
            claims.append([job, 1])
            done = job
    except (TimeoutError, RuntimeError) as exc:
        gave_up = f"{type(exc).__name__}: {exc}"
    return {"start": start, "end": time.time(), "claims": claims, "errors": dict(errors), "gave_up": gave_up}


# -- plain PostgreSQL, no memq (the server's floor on this machine) ----------------------------


def _pg_conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def pgplain_create(url: str, n: int) -> None:
    import psycopg

    with psycopg.connect(_pg_conninfo(url)) as conn:
        conn.execute("CREATE TABLE jobs (id integer PRIMARY KEY, state text NOT NULL, worker text, "
                     "finishes integer NOT NULL DEFAULT 0)")
        conn.execute("CREATE INDEX ix_jobs_state ON jobs (state, id)")
        conn.execute("INSERT INTO jobs (id, state) SELECT g, 'queued' FROM generate_series(1, %s) AS g", (n,))


def pgplain_verify(url: str) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(_pg_conninfo(url)) as conn:
        states = dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
        finishes = conn.execute("SELECT coalesce(sum(finishes), 0) FROM jobs").fetchone()[0]
    return {"states": states, "finishes": finishes}


def pgplain_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """One kept connection; finish + claim (FOR UPDATE SKIP LOCKED) in one transaction per job."""
    import psycopg

    conn = psycopg.connect(_pg_conninfo(spec["db"]))
    name = spec["name"]
    start = barrier(spec)

    def loop() -> list[list[int]]:
        claims: list[list[int]] = []
        done = None
        while True:
            with conn.transaction():
                if done is not None:
                    conn.execute("UPDATE jobs SET state='succeeded', finishes=finishes+1 WHERE id=%s", (done,))
                row = conn.execute(
                    "UPDATE jobs SET state='running', worker=%s WHERE id=(SELECT id FROM jobs WHERE state='queued' "
                    "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id", (name,)).fetchone()
            if row is None:
                return claims
            claims.append([row[0], 1])
            done = row[0]

    claims = _maybe_profiled(spec, loop)
    conn.close()
    return {"start": start, "end": time.time(), "claims": claims}


# -- Optuna's journal ----------------------------------------------------------------------------


def optuna_storage(path: str, lock: str = "symlink") -> Any:
    """Optuna's journal storage with its JournalFileSymlinkLock (its default), or with ``lock="eperm"``
    the same lock taught that EPERM also means "held".

    On the sshfs rig a contended ``symlink()`` (or ``open(O_EXCL)``) fails with EPERM, not EEXIST;
    Optuna's locks retry only on EEXIST, so unmodified they crash with PermissionError as soon as two
    processes on different mounts contend (measured: 3 of 4 processes died in the first second).
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    class EpermSymlinkLock(JournalFileSymlinkLock):
        def acquire(self) -> bool:
            delay = 0.001
            while True:
                try:
                    return super().acquire()
                except PermissionError:  # raised before the lock was taken: nothing to release
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    lock_obj = EpermSymlinkLock(path) if lock == "eperm" else JournalFileSymlinkLock(path)
    return JournalStorage(JournalFileBackend(path, lock_obj=lock_obj))


def optuna_create(path: str, n: int) -> None:
    """A study with n WAITING trials, as n `enqueue_trial` calls would leave it (appended in one go)."""
    import optuna

    storage = optuna_storage(path)
    study = optuna.create_study(storage=storage, study_name="bench")
    study.enqueue_trial({})
    with open(path, "rb") as fh:
        template = json.loads(fh.read().splitlines()[-1])
    if n > 1:
        storage._backend.append_logs([template] * (n - 1))


def optuna_verify(path: str) -> dict[str, Any]:
    storage = optuna_storage(path)
    study_id = storage.get_study_id_from_name("bench")
    states = Counter(t.state.name for t in storage.get_all_trials(study_id, deepcopy=False))
    return {"states": dict(states)}


def optuna_loop(spec: dict[str, Any]) -> dict[str, Any]:
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = optuna_storage(spec["path"], spec.get("optuna_lock", "symlink"))
    study_id = storage.get_study_id_from_name("bench")
    errors: Counter[str] = Counter()
    start = barrier(spec)

    def loop() -> list[list[int]]:
        claims: list[list[int]] = []
        while True:
            try:
                waiting = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,))
            except (ValueError, KeyError) as exc:  # a half-written line read over a network FS
                errors[f"read: {exc}"] += 1
                continue
            if not waiting:
                return claims
            for trial in waiting:  # Study._pop_waiting_trial_id
                try:
                    if not storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                        continue
                except UpdateFinishedTrialError:
                    continue
                claims.append([trial._trial_id, 1])
                storage.set_trial_state_values(trial._trial_id, state=TrialState.COMPLETE, values=[0.0])
                break

    claims = _maybe_profiled(spec, loop)
    return {"start": start, "end": time.time(), "claims": claims, "errors": dict(errors)}


# -- huey ----------------------------------------------------------------------------------------


def make_huey(path: str) -> tuple[Any, Any]:
    from huey import SqliteHuey

    huey = SqliteHuey("bench", filename=path)

    @huey.task(name="noop")
    def noop(i: int) -> int:
        return i

    return huey, noop


def huey_create(path: str, n: int) -> None:
    huey, noop = make_huey(path)
    data = [(huey.name, huey.serialize_task(noop.s(i)), 0.0) for i in range(1, n + 1)]
    with huey.storage.db(commit=True) as curs:
        curs.executemany("INSERT INTO task (queue, data, priority) VALUES (?, ?, ?)", data)
    huey.storage.close()


def huey_verify(path: str) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        results = conn.execute("SELECT count(*) FROM kv").fetchone()[0]
        left = conn.execute("SELECT count(*) FROM task").fetchone()[0]
    finally:
        conn.close()
    return {"results": results, "left": left}


def huey_loop(spec: dict[str, Any]) -> dict[str, Any]:
    huey, _ = make_huey(spec["path"])
    huey.storage.conn  # noqa: B018 - open the connection before the start
    start = barrier(spec)

    def loop() -> list[list[int]]:
        claims: list[list[int]] = []
        while True:
            task = huey.dequeue()
            if task is None:
                return claims
            huey.execute(task)
            claims.append([task.args[0], 1])

    claims = _maybe_profiled(spec, loop)
    return {"start": start, "end": time.time(), "claims": claims}


# -- plumbing ------------------------------------------------------------------------------------


def _maybe_profiled(spec: dict[str, Any], fn: Any) -> Any:
    if not spec.get("profile"):
        return fn()
    import cProfile

    prof = cProfile.Profile()
    try:
        return prof.runcall(fn)
    finally:
        prof.dump_stats(spec["profile"])


LOOPS = {"memq": memq_loop, "plain": plain_loop, "pgplain": pgplain_loop, "optuna": optuna_loop, "huey": huey_loop}


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = LOOPS[spec["kind"]](spec)
    result["cpu"] = time.process_time() - _CPU.get("start", 0.0)  # this process's CPU seconds in the loop
    _write_json(spec["out"], result)


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH_DIR))
    import _loops  # the task names huey registers must match between parent and children

    _loops.main(sys.argv[1])
