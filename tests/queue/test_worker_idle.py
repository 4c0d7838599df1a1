"""Idle workers (issue 20), through real `memq worker` processes on local SQLite and PostgreSQL:
while nothing changes they make no store transaction (counted by wrapping Backend.run, and on
SQLite by the database files too), yet a job submitted later starts within seconds, a drain request
reaches them, and they still watch a worker that began running a job without waking anybody."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from memq.spec import GridSpec, GroupSpec

from ..conftest import Processes, Rig
from . import test_worker as tw
from .test_worker import out  # noqa: F401 - a fixture

IDLE = 3
SETTLE = tw.LEASE * 5 + 60  # a worker's start, however slow the machine: register, beat, claim, one look


def looked_at_others(txlog: Path) -> bool:
    """The end of a worker's start: its one look at the other workers' heartbeats."""
    return any("worker_heartbeats" in t for t in tw.transactions(txlog))


def counts(txlogs: list[Path]) -> list[int]:
    return [len(tw.transactions(log)) for log in txlogs]


def db_files(rig: Rig) -> list[tuple[int, int]]:
    """(size, mtime) of the SQLite database and its WAL: any commit changes one ([] on PostgreSQL)."""
    if rig.db:
        return []
    return [(p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(rig.roots[0].glob("queue.db*"))]


@pytest.mark.parametrize("kind", ["local", "postgres"])
def test_idle_workers_make_no_transaction_yet_take_a_job_and_a_drain_within_seconds(
        kind: str, rigs, tmp_path: Path, out: Path, processes: Processes) -> None:  # noqa: F811
    rig = rigs(kind)
    store = rig.store()
    txlogs = [tmp_path / f"w{i}.tx" for i in range(IDLE)]
    workers = [tw.start_worker(processes, rig, 0, f"w{i}", tmp_path, txlog=log) for i, log in enumerate(txlogs)]
    assert tw.wait_until(lambda: all(map(looked_at_others, txlogs)), SETTLE)
    before, files = counts(txlogs), db_files(rig)
    time.sleep(tw.LEASE)  # (a duration is what is tested: 4 reaper periods, 20 polls)
    assert counts(txlogs) == before, [tw.transactions(log)[n:] for log, n in zip(txlogs, before, strict=True)]
    assert db_files(rig) == files
    # A job submitted now starts on one of them, woken by the version file (their claim timer is the
    # 600 s safety poll, so starting well before it can only be that).
    store.submit(GridSpec("i", (GroupSpec("g"),), tuple(tw.jobs_of("i", "g", out, [0.1]))))
    submitted = time.time()
    assert tw.wait_until(lambda: (1, 1) in tw.started(out), 60)
    assert tw.started(out)[(1, 1)]["start"] - submitted < 60
    assert tw.wait_until(lambda: store.counts()["i"]["succeeded"] == 1, 60)
    # A drain request (`memq drain` writes the store and bumps the version) reaches an idle worker.
    assert store.request_drain("w2")
    assert workers[2].wait(timeout=60) == 0
    assert "drained: exiting" in tw.log_of(tmp_path, "w2")
    assert (tw.worker_row(store, "w2")["state"], tw.worker_row(store, "w2")["reason"]) == ("stopped", "drain requested")
    assert workers[0].poll() is None and workers[1].poll() is None
    assert tw.stop(workers[:2], tmp_path) == [0, 0]


@pytest.mark.parametrize("kind", ["local", "postgres"])
def test_an_idle_worker_declares_dead_a_worker_that_began_its_job_without_a_version_bump(
        kind: str, rigs, tmp_path: Path, out: Path, processes: Processes) -> None:  # noqa: F811
    """The job waits before any worker can run it (the watcher serves another grid), so nothing bumps
    the version file when a worker that starts later claims it: the busy file puts the settled
    watcher back on watch, and it requeues the job once that worker is killed."""
    rig = rigs(kind)
    store = rig.store()
    store.submit(GridSpec("x", (GroupSpec("g"),), tuple(tw.jobs_of("x", "g", out, [tw.GATED], "gate"))))
    txlog = tmp_path / "watcher.tx"
    watcher = tw.start_worker(processes, rig, 0, "watcher", tmp_path, "--grid", "other", txlog=txlog)
    assert tw.wait_until(lambda: looked_at_others(txlog), SETTLE)
    before = counts([txlog])
    time.sleep(tw.LEASE / 2)  # two reaper periods: the watcher stopped watching
    assert counts([txlog]) == before
    doomed = tw.start_worker(processes, rig, 0, "doomed", tmp_path)
    assert tw.wait_until(lambda: (1, 1) in tw.started(out), 60)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed_id = tw.worker_row(store, "doomed")["id"]
    said = f"worker {doomed_id} missed its lease: requeued jobs 1"
    assert tw.wait_until(lambda: said in tw.log_of(tmp_path, "watcher"), tw.LEASE * 5 + 60)
    assert [(a["outcome"], a["worker"]) for a in store.attempts(1)] == [("lost", "doomed")]
    assert [(j["state"], j["attempt"]) for j in store.jobs(grid="x")] == [("queued", 1)]
    assert tw.stop([watcher], tmp_path) == [0]
