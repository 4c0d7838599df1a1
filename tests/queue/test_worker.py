"""Real worker processes running real command jobs, with workers and jobs killed under them.

Timing: the worker settings come from HEARTBEAT, LEASE and POLL below, and every wait is derived
from them or waits for a condition; jobs that must outlast something are gated (they end when the
test opens their gate, tests/queue/jobscript.py), so a slow machine delays a test but never fails
it. Every worker is started through the ``processes`` fixture (tests/conftest.py): none outlives
its test.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from memq.spec import GridSpec, GroupSpec, JobSpec
from memq.store import schema

from ..conftest import Processes, Rig, as_other_host, group_members

JOBSCRIPT = Path(__file__).with_name("jobscript.py")
REPO = Path(__file__).parents[2]
HEARTBEAT, LEASE, POLL = 0.5, 4.0, 0.2  # supervisors kill a job after LEASE/2 without a renewed lease
FAST = ["--heartbeat", str(HEARTBEAT), "--lease", str(LEASE), "--poll", str(POLL), "--retry-backoff", "0",
        "--grace", "1"]
GATED = 600.0  # a gated job's cap: it ends when its gate opens


def jobs_of(grid: str, group: str, out: Path, seconds: list[float], mode: str = "", **kw: object) -> list[JobSpec]:
    return [JobSpec(grid, group, "command", {"i": i, "seconds": s},
                    command=[sys.executable, str(JOBSCRIPT), str(out), "{job_id}", "{attempt}", "{seconds}", mode],
                    **kw) for i, s in enumerate(seconds)]


def start_worker(processes: Processes, rig: Rig, host: int, name: str, tmp: Path, *extra: str,
                 host_name: str | None = None, txlog: Path | None = None) -> subprocess.Popen:
    """`memq worker` on ``host`` of the rig (as host ``host_name``, if given); with ``txlog``, every
    store transaction it makes is logged there (tests/queue/hammer.py)."""
    log = (tmp / f"{name}.log").open("ab")
    memq = ["-m", "memq"] if txlog is None else ["-m", "tests.queue.hammer", "txlog", str(txlog)]
    cmd = [sys.executable, *memq, *rig.cli_args(host), "worker", "--gpus", "none", "--name", name, *FAST, *extra]
    if host_name is not None:
        cmd = as_other_host(host_name, cmd)
    env = {**os.environ, "MEMQ_SCRATCH": str(tmp / "scratch")}
    return processes.start(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between open and read
        return False


def started(out: Path) -> dict[tuple[int, int], dict]:
    found = {}
    for path in out.glob("*.start"):
        job, attempt, _ = path.name.split(".")
        found[(int(job), int(attempt))] = json.loads(path.read_text())
    return found


def open_gate(out: Path, job: int, attempt: int | None = None) -> None:
    """Let a gated job end (only its attempt ``attempt``, if given)."""
    (out / (f"{job}.go" if attempt is None else f"{job}.{attempt}.go")).touch()


def worker_row(store, name: str) -> dict:
    return next(w for w in store.workers() if w["name"] == name)


def log_of(tmp: Path, name: str) -> str:
    return (tmp / f"{name}.log").read_text()


def stop(procs: list[subprocess.Popen], logs: Path | None = None) -> list[int]:
    """SIGTERM each worker once it is up (a signal during start-up just kills the interpreter)."""
    def up(pid: int) -> bool:
        return logs is None or any(f"started (pid {pid}," in f.read_text() for f in logs.glob("*.log"))

    for p in procs:
        wait_until(lambda pid=p.pid: up(pid), 60)
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    return [p.wait(timeout=120) for p in procs]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    (tmp_path / "scratch").mkdir()
    return path


def test_chaos_every_job_succeeds_once_and_attempts_never_overlap(multihost_rig: Rig, tmp_path: Path,
                                                                 out: Path, processes: Processes) -> None:
    rig = multihost_rig
    rng = random.Random(7)
    store = rig.store()
    seconds = [round(rng.uniform(0.1, 0.6), 2) for _ in range(200)]
    store.submit(GridSpec("chaos", (GroupSpec("g"),), tuple(jobs_of("chaos", "g", out, seconds, max_attempts=100))))
    # A lease of 2 s is too tight for four workers serialised through the lock on sshfs while the
    # machine is loaded: a heartbeat can wait longer than that for the lock.
    # --claim-ahead 5: most transactions claim several jobs, so kills also hit jobs claimed ahead
    relaxed = ("--slots", "2", "--heartbeat", "0.5", "--lease", "5", "--claim-ahead", "5")
    workers = {f"w{i}": start_worker(processes, rig, i, f"w{i}", tmp_path, *relaxed) for i in range(4)}
    killed_workers = killed_jobs = 0
    deadline = time.monotonic() + 600
    rounds = 0
    while store.counts()["chaos"]["succeeded"] < 200 and time.monotonic() < deadline:
        # the first kills come quickly: the queue can be done in ten seconds
        time.sleep(rng.uniform(0.5, 1) if killed_workers < 3 else rng.uniform(1, 3))
        rounds += 1
        # a job process first, then three workers, then either at random (a fast run still has both)
        if killed_jobs == 0 or (rounds > 4 and rng.random() < 0.3):
            running = [(r["id"], r["attempt"]) for r in store.jobs(states=["running"])]
            records = started(out)
            # (a running job may have ended already: its end waits for its worker's next transaction)
            victims = [records[k]["pids"][0] for k in running
                       if k in records and alive(records[k]["pids"][0]) and not (out / "{}.{}.end".format(*k)).exists()]
            if victims:
                with contextlib.suppress(ProcessLookupError):  # it may just have finished
                    os.kill(rng.choice(victims), signal.SIGKILL)
                    killed_jobs += 1
            continue
        name = rng.choice(sorted(workers))
        workers[name].kill()
        workers[name].wait()
        killed_workers += 1
        workers[name] = start_worker(processes, rig, int(name[1:]), name, tmp_path, *relaxed)
    def logs() -> str:
        return "\n".join(f"--- {f.name}\n" + "\n".join(f.read_text().splitlines()[-15:])
                         for f in sorted(tmp_path.glob("w*.log")))

    assert store.counts()["chaos"] == {"queued": 0, "running": 0, "succeeded": 200, "failed": 0,
                                       "cancelled": 0}, logs()
    assert stop(list(workers.values()), tmp_path) == [0, 0, 0, 0], logs()
    assert killed_workers >= 3 and killed_jobs >= 1
    times = claim_times(store, "chaos")
    # Claimed ahead: jobs that shared their claim's transaction. How many depends on how fast jobs
    # start on this machine (a loaded one starts them slower, so its workers claim fewer ahead).
    assert len(times) - len(set(times)) >= len(times) // 10, "few transactions claimed ahead"
    assert not list(out.glob("*.overlap")), "two attempts of one job ran at the same time"
    for job in store.jobs():
        outcomes = [a["outcome"] for a in store.attempts(job["id"])]
        assert outcomes.count("succeeded") == 1 and outcomes[-1] == "succeeded", (job["id"], outcomes)
    leftovers = [pid for record in started(out).values() for pid in record["pids"] if alive(pid)]
    assert wait_until(lambda: not [p for p in leftovers if alive(p)], 30), "job processes outlived their workers"
    assert store.integrity() == []


def test_a_due_retry_starts_at_once_on_a_worker_with_a_free_slot(tmp_path: Path, out: Path,
                                                                  processes: Processes) -> None:
    """Job 1 fails while the worker is full; its back-off ends while job 3 still runs and a slot is free.

    The version-file bump of its requeue came while no slot was free, and the claim that found the
    queue dry (job 2's end) was not the one the claim timer listens to: the retry waited for job 3.
    Jobs 2 and 3 are gated: job 3 runs until the test ends, so a retry that waits for it never comes."""
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    backoff = 3.0
    specs = (jobs_of("d", "g", out, [0.3], "failfirst", max_attempts=2)
             + jobs_of("d", "g", out, [GATED, GATED + 1], "gate"))
    store.submit(GridSpec("d", (GroupSpec("g"),), tuple(specs)))
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--slots", "2", "--retry-backoff", str(backoff))
    # job 1 failed and job 3 took its slot: the worker is full; then job 2 ends, before job 1 is due
    assert wait_until(lambda: (3, 1) in started(out), 60)
    open_gate(out, 2)
    assert wait_until(lambda: (1, 2) in started(out), backoff + 60), "the retry waited for a slot it already had"
    first, second = store.attempts(1)
    assert first["outcome"] == "failed"
    # on time: not before its back-off ended, and not after job 3 (which still runs) - within a few polls
    late = second["started_at"] - (first["ended_at"] + backoff)
    assert 0 <= late < 10, late
    assert not (out / "3.1.end").exists()
    assert stop([worker], tmp_path) == [0]


def test_chaos_retries_start_within_seconds_of_their_due_time(tmp_path: Path, out: Path,
                                                              processes: Processes) -> None:
    """Short back-offs, workers stalled (SIGSTOP, under the fencing time) and job processes killed at
    random: a retried job starts within a few seconds of its back-off's end - jobs are short and
    the retry is first in line, so only a worker that forgot it would leave it waiting (until a
    version bump or the safety poll: tens of seconds, or ten minutes)."""
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    rng = random.Random(11)
    specs = [spec for i in range(45)
             for spec in jobs_of("c", "g", out, [round(rng.uniform(0.1, 1.0), 2)], "failfirst" if i % 3 == 0 else "",
                                 max_attempts=10)]
    specs = [JobSpec(spec.grid, spec.group, spec.kind, {**spec.params, "i": i}, command=spec.command,
                     max_attempts=10) for i, spec in enumerate(specs)]
    store.submit(GridSpec("c", (GroupSpec("g"),), tuple(specs)))
    backoff, lease, longest_stop = 1.0, 6.0, 1.2
    assert longest_stop < lease / 2  # a stalled worker's jobs are not fenced
    workers = [start_worker(processes, rig, 0, f"w{i}", tmp_path, "--slots", "2", "--heartbeat", "0.5", "--lease",
                            str(lease), "--retry-backoff", str(backoff), "--quarantine-after", "100")
               for i in range(3)]
    deadline = time.monotonic() + 300
    while store.counts()["c"]["succeeded"] < len(specs) and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.2, 0.8))
        if rng.random() < 0.5:
            victim = rng.choice(workers)
            os.kill(victim.pid, signal.SIGSTOP)
            time.sleep(rng.uniform(0.2, longest_stop))
            os.kill(victim.pid, signal.SIGCONT)
        else:
            pids = [r["pids"][0] for (job, k), r in started(out).items()
                    if alive(r["pids"][0]) and not (out / f"{job}.{k}.end").exists()]
            if pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rng.choice(pids), signal.SIGKILL)
    assert stop(workers, tmp_path) == [0, 0, 0]
    assert store.counts()["c"]["succeeded"] == len(specs)
    late = []
    for job in store.jobs():
        for prev, nxt in itertools.pairwise(store.attempts(job["id"])):
            if prev["outcome"] == "failed":
                due = prev["ended_at"] + backoff * 2 ** (prev["attempt"] - 1)
                late.append((round(nxt["started_at"] - due, 2), job["id"], prev["attempt"]))
    assert len(late) >= 15
    assert min(late)[0] >= 0, sorted(late)[:5]  # none ran before its back-off ended
    # Due retries wait for a free slot (jobs last up to 1 s) and for a stalled worker's hold on the
    # database (up to longest_stop); a loaded machine adds a few seconds - a forgotten retry far more.
    assert max(late)[0] < 2 * longest_stop + lease, sorted(late)[-5:]


def test_sigkilled_worker_leaves_no_job_process(tmp_path: Path, out: Path, processes: Processes) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("k", (GroupSpec("g"),), tuple(jobs_of("k", "g", out, [GATED, GATED], "gate,child"))))
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--slots", "2")
    assert wait_until(lambda: len(started(out)) == 2, 60)
    pids = [pid for record in started(out).values() for pid in record["pids"]]
    assert len(pids) == 4 and all(alive(p) for p in pids)
    worker.kill()
    worker.wait()
    assert wait_until(lambda: not [p for p in pids if alive(p)], 30), "a job process survived SIGKILL of its worker"


def test_a_test_s_processes_are_reaped_with_their_supervisors_and_jobs(tmp_path: Path, out: Path,
                                                                       processes: Processes) -> None:
    """What every worker test's teardown relies on (the ``processes`` fixture): a worker left stopped
    (SIGSTOP) with running jobs whose own children are in their jobs' process groups - nothing of
    it outlives the reaping."""
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("r", (GroupSpec("g"),), tuple(jobs_of("r", "g", out, [GATED, GATED], "gate,child"))))
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--slots", "2")
    assert wait_until(lambda: len(started(out)) == 2, 60)
    supervisors = [pid for pid in group_members(worker.pid) if pid != worker.pid]
    jobs = [pid for record in started(out).values() for pid in record["pids"]]
    assert len(supervisors) == 2 and len(jobs) == 4 and all(map(alive, supervisors + jobs))
    os.kill(worker.pid, signal.SIGSTOP)
    processes.reap()
    assert wait_until(lambda: not any(map(alive, [worker.pid, *supervisors, *jobs])), 30)


@pytest.mark.parametrize("kind", ["local", "twohost"])
def test_stopped_worker_is_fenced_and_its_job_is_not_recorded_twice(kind: str, rigs, tmp_path: Path, out: Path,
                                                                    processes: Processes) -> None:
    """A worker stalls (SIGSTOP) with a job; on two hosts it runs on mount A under another host name,
    so only its lease can tell: its supervisor kills the job after lease/2, a worker on mount B
    declares it dead after a lease on its own clock and reruns the job; attempts never overlap."""
    rig = rigs(kind)
    store = rig.store(1)
    store.submit(GridSpec("s", (GroupSpec("g"),), tuple(jobs_of("s", "g", out, [GATED], "gate"))))
    stale = start_worker(processes, rig, 0, "stale", tmp_path, host_name="host-a" if kind == "twohost" else None)
    assert wait_until(lambda: (1, 1) in started(out), 60)
    first_pid = started(out)[(1, 1)]["pids"][0]
    os.kill(stale.pid, signal.SIGSTOP)
    try:
        # Its supervisor kills the job once the lease can no longer be renewed (lease/2)...
        assert wait_until(lambda: not alive(first_pid), LEASE * 5)
        other = start_worker(processes, rig, 1, "other", tmp_path)
        # ...and another worker declares it dead after a lease on its own clock and reruns the job.
        assert wait_until(lambda: (1, 2) in started(out), LEASE * 5 + 60)
    finally:
        os.kill(stale.pid, signal.SIGCONT)
    # it learns it was declared dead and rejoins as the next incarnation of its name
    assert wait_until(lambda: "rejoined as incarnation 2" in log_of(tmp_path, "stale"), LEASE * 5 + 60)
    open_gate(out, 1, 2)
    assert wait_until(lambda: store.counts()["s"]["succeeded"] == 1, 60)
    assert stop([other], tmp_path) == [0]
    assert [(a["outcome"], a["worker"]) for a in store.attempts(1)] == [("lost", "stale"), ("succeeded", "other")]
    assert not list(out.glob("*.overlap"))
    assert "declared dead" in log_of(tmp_path, "stale")
    # ...and serves on: alone now, it runs the next job
    store.submit(GridSpec("s2", (GroupSpec("g"),), tuple(jobs_of("s2", "g", out, [0.1]))))
    assert wait_until(lambda: store.counts()["s2"]["succeeded"] == 1, 60)
    assert stale.poll() is None and stop([stale], tmp_path) == [0]
    assert worker_row(store, "stale")["incarnation"] == 2
    assert store.integrity() == []


def test_dependencies_and_a_failed_dependency_blocks_with_a_reason(tmp_path: Path, out: Path, cli,
                                                                   processes: Processes) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    first = jobs_of("d", "first", out, [0.2, 0.8, 0.4, 1.0])
    second = jobs_of("d", "second", out, [0.1, 0.1])
    store.submit(GridSpec("d", (GroupSpec("first"), GroupSpec("second", ("first",))), tuple(first + second)))
    broken = jobs_of("b", "a", out, [0.1], "fail", max_attempts=1) + jobs_of("b", "z", out, [0.1])
    store.submit(GridSpec("b", (GroupSpec("a"), GroupSpec("z", ("a",))), tuple(broken)))
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--slots", "3", "--idle-exit", "2")
    assert worker.wait(timeout=120) == 0
    ids = {(r["grid"], r["group"]): [] for r in store.jobs()}
    for r in store.jobs():
        ids[(r["grid"], r["group"])].append(r["id"])
    runs = started(out)
    ends = {int(p.name.split(".")[0]): json.loads(p.read_text())["end"] for p in out.glob("*.end")}
    assert min(runs[(j, 1)]["start"] for j in ids[("d", "second")]) >= max(ends[j] for j in ids[("d", "first")])
    assert store.counts()["b"]["failed"] == 1 and store.counts()["b"]["queued"] == 1
    status = json.loads(cli(*rig.cli_args(), "status", "--json").out)
    z = next(g for g in status["grids"] if g["name"] == "b")["groups"][1]
    assert z["blocked"].startswith("blocked: a has 1 failed")


def test_sigterm_requeues_running_jobs_without_charging_them(tmp_path: Path, out: Path,
                                                             processes: Processes) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("t", (GroupSpec("g"),), tuple(jobs_of("t", "g", out, [GATED, GATED], "gate",
                                                                 max_attempts=1))))
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--slots", "2")
    assert wait_until(lambda: len(started(out)) == 2, 60)
    assert stop([worker], tmp_path) == [0]
    jobs = store.jobs()
    assert [(j["state"], j["failures"], j["crashes"]) for j in jobs] == [("queued", 0, 0)] * 2
    assert all(not alive(pid) for r in started(out).values() for pid in r["pids"])
    # max_attempts is 1, yet the jobs run again: a drain is not the job's fault.
    again = start_worker(processes, rig, 0, "w2", tmp_path, "--slots", "2")
    assert wait_until(lambda: len(started(out)) == 4, 60)
    assert stop([again], tmp_path) == [0]


# -- drain, second signal, cancel, quarantine -----------------------------------------------------

@pytest.mark.parametrize("kind", ["local", "twohost"])
def test_a_drain_from_another_host_lets_the_running_job_finish_then_the_worker_exits(
        kind: str, rigs, tmp_path: Path, out: Path, cli, processes: Processes) -> None:
    """`memq drain NAME` on host B reaches the worker on host A through the store: it stops claiming,
    its running job finishes and is recorded, and it exits 0 without claiming the queued job."""
    rig = rigs(kind)
    store = rig.store()
    store.submit(GridSpec("d", (GroupSpec("g"),), tuple(jobs_of("d", "g", out, [GATED, GATED], "gate"))))
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--grace", str(GATED), "--claim-ahead", "0")
    assert wait_until(lambda: (1, 1) in started(out), 60)
    drained = cli(*rig.cli_args(1), "drain", "w")
    assert (drained.code, drained.out) == (0, "w: drain requested\n"), drained
    assert wait_until(lambda: worker_row(store, "w")["state"] == "draining", 60)  # (its heartbeat's reply)
    open_gate(out, 1)
    assert worker.wait(timeout=60) == 0  # a claimed job 2 would have held it for GATED seconds
    assert [(j["state"], j["attempt"]) for j in store.jobs()] == [("succeeded", 1), ("queued", 0)]
    assert sorted(started(out)) == [(1, 1)]
    assert (worker_row(store, "w")["state"], worker_row(store, "w")["reason"]) == ("stopped", "drain requested")
    assert "drained: exiting" in log_of(tmp_path, "w")
    assert cli(*rig.cli_args(1), "drain", "nobody").code == 2


def test_a_job_still_running_after_the_drain_grace_goes_back_to_the_queue_uncharged(
        tmp_path: Path, out: Path, cli, processes: Processes) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("d", (GroupSpec("g"),), tuple(jobs_of("d", "g", out, [GATED], "gate,child",
                                                                 max_attempts=1))))
    grace = 2.0
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--grace", str(grace))
    assert wait_until(lambda: (1, 1) in started(out), 60)
    pids = started(out)[(1, 1)]["pids"]
    asked = time.time()
    assert cli(*rig.cli_args(), "drain", "w").code == 0
    assert worker.wait(timeout=grace + 60) == 0
    (job,) = store.jobs()
    assert (job["state"], job["attempt"], job["failures"], job["crashes"]) == ("queued", 1, 0, 0)
    (attempt,) = store.attempts(1)
    assert (attempt["outcome"], attempt["reason"]) == ("requeued", "worker stopped")
    assert attempt["ended_at"] - asked >= grace  # it had its grace
    assert wait_until(lambda: not any(alive(p) for p in pids), 30)
    # max_attempts is 1, yet it may run again: a drain is not the job's fault
    me = store.register_worker("next", "host", 1, "boot", [], 1, 60.0)
    from memq.store.types import Capacity

    assert store.claim(me, Capacity(slots=1))[1].attempt == 2


def test_a_second_signal_requeues_at_once(tmp_path: Path, out: Path, processes: Processes) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("d", (GroupSpec("g"),), tuple(jobs_of("d", "g", out, [GATED], "gate", max_attempts=1))))
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--grace", str(GATED))
    assert wait_until(lambda: (1, 1) in started(out), 60)
    worker.send_signal(signal.SIGTERM)
    assert wait_until(lambda: worker_row(store, "w")["state"] == "draining", 60)
    assert worker.poll() is None  # draining: the job has GATED seconds
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=60) == 0
    assert [(j["state"], j["failures"], j["crashes"]) for j in store.jobs()] == [("queued", 0, 0)]
    assert [a["outcome"] for a in store.attempts(1)] == ["requeued"]
    assert wait_until(lambda: not alive(started(out)[(1, 1)]["pids"][0]), 30)


def test_cancel_kills_the_job_process_and_the_worker_serves_on(tmp_path: Path, out: Path, cli,
                                                               processes: Processes) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    specs = jobs_of("c", "g", out, [GATED], "gate,child") + jobs_of("c", "g", out, [0.1, 0.1])[1:]
    store.submit(GridSpec("c", (GroupSpec("g"),), tuple(specs)))
    worker = start_worker(processes, rig, 0, "w", tmp_path)
    assert wait_until(lambda: (1, 1) in started(out), 60)
    pids = started(out)[(1, 1)]["pids"]  # the job and its own child
    assert cli(*rig.cli_args(), "cancel", "1").code == 0
    # the worker hears it with its next heartbeat and stops the job's process group
    assert wait_until(lambda: not any(alive(p) for p in pids), HEARTBEAT * 10 + 30), "the job process still runs"
    assert wait_until(lambda: store.jobs(ids=[1])[0]["state"] == "cancelled", 30)
    assert wait_until(lambda: store.counts()["c"]["succeeded"] == 1, 60)  # and it took the next job
    assert not (out / "1.1.end").exists()
    assert [(a["outcome"], a["reason"]) for a in store.attempts(1)] == [("cancelled", "cancelled")]
    assert worker.poll() is None and stop([worker], tmp_path) == [0]


def test_a_worker_whose_jobs_keep_failing_quarantines_itself(tmp_path: Path, out: Path, cli,
                                                             processes: Processes) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("q", (GroupSpec("g"),), tuple(jobs_of("q", "g", out, [0.1] * 5, "fail", max_attempts=1))))
    bad = start_worker(processes, rig, 0, "bad", tmp_path, "--quarantine-after", "3", "--idle-exit", "3")
    assert bad.wait(timeout=120) == 0
    assert store.counts()["q"]["failed"] == 3 and store.counts()["q"]["queued"] == 2
    workers = json.loads(cli(*rig.cli_args(), "status", "--json").out)["workers"]
    assert "3 job failures in a row" in next(w for w in workers if w["name"] == "bad")["reason"]


# -- failures: back-off, exit 78 ------------------------------------------------------------------

def not_before(store, job_id: int) -> float | None:
    """The job's retry time as the store keeps it (the claim leaves it; the next failure replaces it)."""
    query = sa.select(schema.jobs.c.not_before).where(schema.jobs.c.id == job_id)
    return store.backend.run(lambda conn: conn.execute(query).scalar(), write=False)


def test_the_retry_back_off_doubles_with_each_attempt(tmp_path: Path, out: Path, processes: Processes) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("b", (GroupSpec("g"),), tuple(jobs_of("b", "g", out, [GATED], "gate,fail",
                                                                 max_attempts=4))))
    backoff = 0.5
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--retry-backoff", str(backoff), "--quarantine-after",
                          "10")
    retry_at = {}
    for k in (1, 2, 3):
        assert wait_until(lambda k=k: (1, k) in started(out), 60)
        open_gate(out, 1, k)  # attempt k exits 7
        assert wait_until(lambda k=k: (1, k + 1) in started(out), backoff * 2 ** k + 60)
        retry_at[k] = not_before(store, 1)  # attempt k's, until attempt k + 1 ends
    open_gate(out, 1, 4)
    assert wait_until(lambda: store.jobs(ids=[1])[0]["state"] == "failed", 60)  # its 4th failure was its last
    attempts = store.attempts(1)
    assert [a["outcome"] for a in attempts] == ["failed"] * 4
    for k in (1, 2, 3):
        assert retry_at[k] - attempts[k - 1]["ended_at"] == pytest.approx(backoff * 2 ** (k - 1), abs=1e-3)
        assert attempts[k]["started_at"] >= retry_at[k]
    assert stop([worker], tmp_path) == [0]


def test_exit_78_fails_at_once_and_other_failures_are_retried(tmp_path: Path, out: Path,
                                                              processes: Processes) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    specs = jobs_of("p", "g", out, [0.1], "permanent", max_attempts=5) + jobs_of("p", "g", out, [0.1, 0.1], "fail",
                                                                                 max_attempts=3)[1:]
    store.submit(GridSpec("p", (GroupSpec("g"),), tuple(specs)))
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--idle-exit", "2", "--quarantine-after", "10")
    assert worker.wait(timeout=120) == 0
    permanent, plain = store.jobs(grid="p")
    assert (permanent["state"], permanent["attempt"], permanent["failures"], permanent["exit_code"]) == (
        "failed", 1, 1, 78)
    assert [(a["outcome"], a["exit_code"]) for a in store.attempts(permanent["id"])] == [("failed", 78)]
    assert (plain["state"], plain["attempt"], plain["exit_code"]) == ("failed", 3, 7)  # retried to its limit
    assert sorted(k for k in started(out) if k[0] == permanent["id"]) == [(permanent["id"], 1)]


# -- GPUs ------------------------------------------------------------------------------------------

def test_gpus_declared_by_hand_are_given_out_exclusively_with_cuda_visible_devices(
        tmp_path: Path, out: Path, processes: Processes) -> None:
    """`--gpus 0,1` on a node without NVML: each job gets CUDA_VISIBLE_DEVICES with the GPUs it asked
    for, never one that a running job holds; a job needing more than the node has stays queued."""
    from memq.gpus import Nvml

    if Nvml().available:
        pytest.skip("this node has NVML; the test declares GPUs it does not have")
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    jobs = (jobs_of("gpu", "one", out, [GATED] * 3, "gate", gpus=1)
            + jobs_of("gpu", "two", out, [GATED], "gate", gpus=2, cpus=3) + jobs_of("gpu", "three", out, [0.1], gpus=3))
    store.submit(GridSpec("gpu", (GroupSpec("one"), GroupSpec("two"), GroupSpec("three")), tuple(jobs)))
    cmd = ["--gpus", "0,1", "--slots", "0"]
    worker = start_worker(processes, rig, 0, "w", tmp_path, *cmd)  # (the later --gpus wins)

    def gpus(job: int) -> str:
        return started(out)[(job, 1)]["gpus"]

    assert wait_until(lambda: (1, 1) in started(out) and (2, 1) in started(out), 60)
    assert sorted([gpus(1), gpus(2)]) == ["0", "1"]  # both GPUs busy: job 3 must wait
    open_gate(out, 1)
    assert wait_until(lambda: (3, 1) in started(out), 60)
    assert gpus(3) == gpus(1) and not (out / "2.1.end").exists()  # the GPU job 1 gave back, while 2 runs
    assert (4, 1) not in started(out)
    open_gate(out, 2)
    open_gate(out, 3)
    assert wait_until(lambda: (4, 1) in started(out), 60)
    record = started(out)[(4, 1)]
    assert (record["gpus"], record["device_order"], record["threads"]) == ("0,1", "PCI_BUS_ID", "3")
    assert started(out)[(1, 1)]["threads"] == "1"  # the CPU threads it asked for (default 1), not one per core
    open_gate(out, 4)
    assert wait_until(lambda: store.counts()["gpu"]["succeeded"] == 4, 60)
    assert stop([worker], tmp_path) == [0]
    assert store.counts()["gpu"]["queued"] == 1 and (5, 1) not in started(out)  # 3 GPUs never fit a 2-GPU node
    assert "GPUs: 0,1 (not checked: no NVML)" in log_of(tmp_path, "w")


def test_runner_refuses_an_unknown_or_unimplemented_kind(tmp_path: Path) -> None:
    from memq.kinds import KindNotImplemented, KindSpec, entry_function

    with pytest.raises(KindNotImplemented, match="reserved but not implemented"):
        entry_function(KindSpec("x.y", "jobs.not_there:run"))
    env = {**os.environ, "MEMQ_JOB_ID": "1", "MEMQ_ATTEMPT": "1", "MEMQ_GRID": "g", "MEMQ_GROUP": "a",
           "MEMQ_KIND": "no.such.kind", "MEMQ_PARAMS": "{}", "MEMQ_JOB_DIR": str(tmp_path),
           "MEMQ_SCRATCH_DIR": str(tmp_path), "MEMQ_ROOT": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "memq.runner"], env=env, capture_output=True, text=True)
    assert done.returncode == 78 and "cannot run job kind 'no.such.kind'" in done.stderr
    # A kind that raises memq.runner.PermanentError (here: its data directory is missing) is not retried,
    # also when the runner runs as __main__.
    env.update(MEMQ_KIND="mem.train", MEMQ_PARAMS='{"DATASET.DIR": "/no/such/dir"}')
    done = subprocess.run([sys.executable, "-m", "memq.runner"], env=env, capture_output=True, text=True)
    assert done.returncode == 78 and "/no/such/dir" in done.stderr and "not retried" in done.stderr


def test_a_command_that_cannot_be_executed_fails_at_once_and_says_why(tmp_path: Path, cli,
                                                                      processes: Processes) -> None:
    """Missing program, a file without the x bit, an argument over the kernel's limit: permanent
    failures at the first attempt, with the system's reason in the job's log and in `memq status`."""
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    plain = tmp_path / "not-executable.sh"
    plain.write_text("#!/bin/sh\necho hi\n")
    argvs = [[str(tmp_path / "no-such-program")], [str(plain)], ["echo", "x" * 200_000]]
    specs = tuple(JobSpec("u", "g", "command", {"i": i}, command=argv) for i, argv in enumerate(argvs))
    store.submit(GridSpec("u", (GroupSpec("g"),), specs))
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--idle-exit", "1", "--quarantine-after", "10")
    assert worker.wait(timeout=120) == 0
    why = ["No such file or directory", "Permission denied", "Argument list too long"]
    for job, argv, expected in zip(store.jobs(), argvs, why, strict=True):
        assert (job["state"], job["attempt"]) == ("failed", 1), job
        assert job["reason"] == f"cannot execute {argv[0]!r}: {expected}"
        log = cli(*rig.cli_args(), "logs", job["id"]).out
        assert log.splitlines()[-1] == f"# memq: {job['reason']}; not retried"
        assert "# memq: argv " in log
    failures = json.loads(cli(*rig.cli_args(), "status", "--json").out)["recent_failures"]
    assert sorted(f["reason"] for f in failures) == sorted(j["reason"] for j in store.jobs())


def test_a_job_log_ends_with_how_the_attempt_ended(tmp_path: Path, out: Path, cli, processes: Processes) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("e", (GroupSpec("g"),), tuple(jobs_of("e", "g", out, [0.1, GATED], "gate"))))
    open_gate(out, 1)
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--slots", "2")
    assert wait_until(lambda: (2, 1) in started(out) and store.counts()["e"]["succeeded"] == 1, 60)
    assert cli(*rig.cli_args(), "cancel", "2").code == 0
    assert wait_until(lambda: store.counts()["e"]["cancelled"] == 1, 60)
    assert stop([worker], tmp_path) == [0]
    first = cli(*rig.cli_args(), "logs", "1").out.splitlines()[1:]  # after the "==> job 1 attempt 1" title
    assert first[0].startswith("# memq: job 1 attempt 1 on ") and first[1].startswith("# memq: argv ")
    assert re.fullmatch(r"# memq: ended: exit code 0, after \d+\.\ds", first[-1])
    last = cli(*rig.cli_args(), "logs", "2").out.splitlines()[-1]
    assert re.fullmatch(r"# memq: stopped: cancelled, killed by signal SIGTERM, after \d+\.\ds", last)


def test_logs_follow_a_job_across_attempts(tmp_path: Path, out: Path, cli, processes: Processes) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    code = ("import os, sys; k = os.environ['MEMQ_ATTEMPT']; print('attempt', k, 'of', os.environ['MEMQ_JOB_ID']);"
            "sys.exit(0 if k == '2' else 5)")
    job = JobSpec("l", "g", "command", {}, command=[sys.executable, "-c", code])
    store.submit(GridSpec("l", (GroupSpec("g"),), (job,)))
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--idle-exit", "1")
    followed = cli(*rig.cli_args(), "logs", "1", "-f")  # returns once the job has ended
    assert worker.wait(timeout=120) == 0
    assert followed.code == 0
    assert followed.out.index("attempt 1 of 1") < followed.out.index("==> job 1 attempt 2") < followed.out.index(
        "attempt 2 of 1")
    assert cli(*rig.cli_args(), "logs", "1", "--attempt", "1").out.count("attempt 2 of 1") == 0
    assert cli(*rig.cli_args(), "logs", "99").code == 2


# -- outages and idleness -------------------------------------------------------------------------

def test_a_database_outage_neither_stops_the_worker_nor_loses_its_job(rigs, tmp_path: Path, out: Path,
                                                                      processes: Processes) -> None:
    rig = rigs("postgres")
    admin = sa.create_engine(rig.db.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    database = rig.db.rsplit("/", 1)[1]
    try:
        store = rig.store()
        store.submit(GridSpec("o", (GroupSpec("g"),), tuple(jobs_of("o", "g", out, [GATED, 0.5], "gate"))))
        lease = 30.0
        worker = start_worker(processes, rig, 0, "w", tmp_path, "--heartbeat", "0.5", "--lease", str(lease))
        assert wait_until(lambda: (1, 1) in started(out), 60)
        with admin.connect() as conn:  # the server goes away, as in a restart, until the worker noticed
            conn.execute(sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                         {"d": database})
            assert wait_until(lambda: "database unavailable" in log_of(tmp_path, "w"), lease / 4)
            conn.execute(sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        store.backend.dispose()  # (this process's connections were ended too)
        open_gate(out, 1)
        assert wait_until(lambda: store.counts()["o"]["succeeded"] == 2, 60), log_of(tmp_path, "w")
        assert worker.poll() is None  # still serving
        assert stop([worker], tmp_path) == [0]
        jobs = {job["id"]: job for job in store.jobs(grid="o")}
        assert all(job["attempt"] == 1 and job["crashes"] == 0 for job in jobs.values())  # nothing ran twice
        assert sorted(started(out)) == [(1, 1), (2, 1)]
    finally:
        admin.dispose()


def test_a_shared_sqlite_outage_neither_stops_the_worker_nor_loses_its_job(rigs, tmp_path: Path, out: Path,
                                                                           processes: Processes) -> None:
    """On two hosts: the database file is moved away through mount B while the worker on mount A
    runs a job, and back once the worker has found it gone. The worker keeps its job running, makes
    no database of its own in its place, and records the job once when the file is back."""
    rig = rigs("twohost")
    store = rig.store(1)
    store.submit(GridSpec("o", (GroupSpec("g"),), tuple(jobs_of("o", "g", out, [GATED, 0.5], "gate"))))
    open_gate(out, 2)
    lease = 30.0
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--heartbeat", "0.5", "--lease", str(lease))
    assert wait_until(lambda: (1, 1) in started(out), 60)
    db, away = rig.roots[1] / "queue.db", rig.roots[1] / "queue.db.away"
    db.rename(away)
    try:
        assert wait_until(lambda: "database unavailable" in log_of(tmp_path, "w"), lease / 4)
        assert not db.exists(), "the worker made a new database in place of the missing one"
    finally:
        away.rename(db)
    assert alive(started(out)[(1, 1)]["pids"][0])  # the outage did not stop the job
    open_gate(out, 1)
    assert wait_until(lambda: store.counts()["o"]["succeeded"] == 2, 60), log_of(tmp_path, "w")
    assert worker.poll() is None
    assert stop([worker], tmp_path) == [0]
    assert "unable to open database file" in log_of(tmp_path, "w")
    assert all(job["attempt"] == 1 and job["crashes"] == 0 for job in store.jobs(grid="o"))
    assert sorted(started(out)) == [(1, 1), (2, 1)]
    assert store.integrity() == []


def transactions(txlog: Path) -> list[str]:
    """The store transactions a worker run under `hammer txlog` made: '<time> <r|w> <function>'."""
    return txlog.read_text().splitlines() if txlog.exists() else []


def test_an_idle_worker_only_looks_at_the_version_file(rigs, tmp_path: Path, out: Path,
                                                       processes: Processes) -> None:
    """On two hosts: an idle worker on mount A makes no store transaction - it neither takes the lock
    nor touches the database file - however often it polls; a submit from mount B wakes it within
    a few polls (its claim timer is the 10-minute safety poll: only the version file can)."""
    rig = rigs("twohost")
    store = rig.store(1)
    txlog = tmp_path / "w.tx"
    worker = start_worker(processes, rig, 0, "w", tmp_path, txlog=txlog)
    # Its start: register, heartbeat, a claim that finds nothing, and one look at the other workers
    # (a lease/4 later) that finds none busy. Then nothing.
    assert wait_until(lambda: any("worker_heartbeats" in t for t in transactions(txlog)), LEASE * 5 + 60)
    db = rig.roots[1] / "queue.db"
    before = (len(transactions(txlog)), db.stat().st_mtime_ns, db.stat().st_size, db.stat().st_ino)
    polls = 20
    time.sleep(polls * POLL)  # (a duration is what is tested here)
    after = (len(transactions(txlog)), db.stat().st_mtime_ns, db.stat().st_size, db.stat().st_ino)
    assert after == before, transactions(txlog)[before[0]:]
    assert not (rig.roots[1] / "queue.db.lock").exists() and not (rig.roots[1] / "queue.db-journal").exists()
    assert worker.poll() is None
    store.submit(GridSpec("i", (GroupSpec("g"),), tuple(jobs_of("i", "g", out, [0.1]))))
    assert wait_until(lambda: store.counts()["i"]["succeeded"] == 1, POLL * 10 + 60)
    assert stop([worker], tmp_path) == [0]
    assert [t.split()[1:] for t in transactions(txlog)[before[0]:before[0] + 1]] == [
        ["w", "WorkerOps.heartbeat.<locals>.tx"]]  # woken by the version file, it beats, then claims


def claim_times(store, grid: str) -> list[float]:
    """When each job of ``grid`` was claimed: jobs claimed in one transaction share the time."""
    return [a["started_at"] for job in store.jobs(grid=grid) for a in store.attempts(job["id"])]


def test_short_jobs_are_claimed_ahead_and_still_run_one_per_slot(tmp_path: Path, out: Path,
                                                                 processes: Processes) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("short", (GroupSpec("g"),), tuple(jobs_of("short", "g", out, [0] * 24))))
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--claim-ahead", "30", "--idle-exit", "1")
    assert worker.wait(timeout=180) == 0
    assert store.counts()["short"]["succeeded"] == 24
    times = claim_times(store, "short")
    assert len(times) == 24 and len(set(times)) <= 8  # most transactions claimed several jobs
    runs = sorted((r["start"], json.loads((out / f"{job}.{attempt}.end").read_text())["end"])
                  for (job, attempt), r in started(out).items())
    assert len(runs) == 24
    assert all(start >= end for (_, end), (start, _) in itertools.pairwise(runs)), "one slot ran two jobs at once"
    # --claim-ahead 0: one job per transaction
    store.submit(GridSpec("single", (GroupSpec("g"),), tuple(jobs_of("single", "g", out, [0] * 6))))
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--claim-ahead", "0", "--idle-exit", "1")
    assert worker.wait(timeout=180) == 0
    assert len(set(claim_times(store, "single"))) == 6


def test_a_stopping_worker_gives_back_the_jobs_it_claimed_ahead_uncharged(tmp_path: Path, out: Path,
                                                                          processes: Processes) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("t", (GroupSpec("g"),), tuple(jobs_of("t", "g", out, [0.2] * 30, max_attempts=1))))
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--claim-ahead", "30")
    assert wait_until(lambda: len(started(out)) >= 3, 60)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    jobs = store.jobs(grid="t")
    queued = [j for j in jobs if j["state"] == "queued"]
    assert {j["state"] for j in jobs} == {"succeeded", "queued"}
    assert all((j["failures"], j["crashes"]) == (0, 0) for j in queued)
    given_back = [j for j in queued if j["attempt"] == 1 and (j["id"], 1) not in started(out)]
    assert given_back, "the worker had claimed ahead"
    assert {store.attempts(j["id"])[0]["reason"] for j in given_back} == {"worker stopped before starting it"}
    # max_attempts is 1, yet they run: giving them back was not their fault
    again = start_worker(processes, rig, 0, "w2", tmp_path, "--idle-exit", "1")
    assert again.wait(timeout=180) == 0
    assert store.counts()["t"]["succeeded"] == 30
