"""Real worker processes running real command jobs, with workers and jobs killed under them."""

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

from memq.spec import GridSpec, GroupSpec, JobSpec

from ..conftest import Rig

JOBSCRIPT = Path(__file__).with_name("jobscript.py")
REPO = Path(__file__).parents[2]
FAST = ["--heartbeat", "0.3", "--lease", "2", "--poll", "0.2", "--retry-backoff", "0", "--grace", "1"]


def jobs_of(grid: str, group: str, out: Path, seconds: list[float], mode: str = "", **kw: object) -> list[JobSpec]:
    return [JobSpec(grid, group, "command", {"i": i, "seconds": s},
                    command=[sys.executable, str(JOBSCRIPT), str(out), "{job_id}", "{attempt}", "{seconds}", mode],
                    **kw) for i, s in enumerate(seconds)]


def start_worker(rig: Rig, host: int, name: str, tmp: Path, *extra: str) -> subprocess.Popen:
    log = (tmp / f"{name}.log").open("ab")
    cmd = [sys.executable, "-m", "memq", *rig.cli_args(host), "worker", "--gpus", "none", "--name", name,
           *FAST, *extra]
    env = {**os.environ, "MEMQ_SCRATCH": str(tmp / "scratch")}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)


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


def stop(procs: list[subprocess.Popen], logs: Path | None = None) -> list[int]:
    """SIGTERM each worker once it is up (a signal during start-up just kills the interpreter)."""
    def up(pid: int) -> bool:
        return logs is None or any(f"started (pid {pid}," in f.read_text() for f in logs.glob("*.log"))

    for p in procs:
        wait_until(lambda pid=p.pid: up(pid), 30)
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    return [p.wait(timeout=60) for p in procs]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    (tmp_path / "scratch").mkdir()
    return path


def test_chaos_every_job_succeeds_once_and_attempts_never_overlap(multihost_rig: Rig, tmp_path: Path,
                                                                 out: Path) -> None:
    rig = multihost_rig
    rng = random.Random(7)
    store = rig.store()
    seconds = [round(rng.uniform(0.1, 0.6), 2) for _ in range(200)]
    store.submit(GridSpec("chaos", (GroupSpec("g"),), tuple(jobs_of("chaos", "g", out, seconds, max_attempts=100))))
    # A lease of 2 s is too tight for four workers serialised through the lock on sshfs while the
    # machine is loaded: a heartbeat can wait longer than that for the lock.
    # --claim-ahead 5: most transactions claim several jobs, so kills also hit jobs claimed ahead
    relaxed = ("--slots", "2", "--heartbeat", "0.5", "--lease", "5", "--claim-ahead", "5")
    workers = {f"w{i}": start_worker(rig, i, f"w{i}", tmp_path, *relaxed) for i in range(4)}
    killed_workers = killed_jobs = 0
    deadline = time.monotonic() + 300
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
        workers[name] = start_worker(rig, int(name[1:]), name, tmp_path, *relaxed)
    def logs() -> str:
        return "\n".join(f"--- {f.name}\n" + "\n".join(f.read_text().splitlines()[-15:])
                         for f in sorted(tmp_path.glob("w*.log")))

    assert store.counts()["chaos"] == {"queued": 0, "running": 0, "succeeded": 200, "failed": 0,
                                       "cancelled": 0}, logs()
    assert stop(list(workers.values()), tmp_path) == [0, 0, 0, 0], logs()
    assert killed_workers >= 3 and killed_jobs >= 1
    times = claim_times(store, "chaos")
    assert len(set(times)) < len(times) / 2, "few transactions claimed ahead"
    assert not list(out.glob("*.overlap")), "two attempts of one job ran at the same time"
    for job in store.jobs():
        outcomes = [a["outcome"] for a in store.attempts(job["id"])]
        assert outcomes.count("succeeded") == 1 and outcomes[-1] == "succeeded", (job["id"], outcomes)
    leftovers = [pid for record in started(out).values() for pid in record["pids"] if alive(pid)]
    assert wait_until(lambda: not [p for p in leftovers if alive(p)], 10), "job processes outlived their workers"
    assert store.integrity() == []


def test_a_due_retry_starts_at_once_on_a_worker_with_a_free_slot(tmp_path: Path, out: Path) -> None:
    """Job 1 fails while the worker is full; its back-off ends while job 3 still runs and a slot is free.

    The version-file bump of its requeue came while no slot was free, and the claim that found the
    queue dry (job 2's end) was not the one the claim timer listens to: the retry waited for job 3."""
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    specs = (jobs_of("d", "g", out, [0.3], "failfirst", max_attempts=2) + jobs_of("d", "g", out, [1.5])
             + jobs_of("d", "g", out, [15]))
    store.submit(GridSpec("d", (GroupSpec("g"),), tuple(specs)))
    worker = start_worker(rig, 0, "w", tmp_path, "--slots", "2", "--retry-backoff", "3")
    try:
        assert wait_until(lambda: (1, 2) in started(out), 14), "the retry waited for a slot it already had"
        first, second = store.attempts(1)
        assert first["outcome"] == "failed"
        assert second["started_at"] - (first["ended_at"] + 3) < 2.0
        assert (3, 1) in started(out) and not (out / "3.1.end").exists()
    finally:
        assert stop([worker], tmp_path) == [0]


def test_chaos_retries_start_within_seconds_of_their_due_time(tmp_path: Path, out: Path) -> None:
    """Short back-offs, workers stalled (SIGSTOP, under the fencing time) and job processes killed at
    random: a retried job starts within a few seconds of its back-off's end - jobs are short and
    the retry is first in line, so only a worker that forgot it would leave it waiting."""
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    rng = random.Random(11)
    specs = [spec for i in range(45)
             for spec in jobs_of("c", "g", out, [round(rng.uniform(0.1, 1.0), 2)], "failfirst" if i % 3 == 0 else "",
                                 max_attempts=10)]
    specs = [JobSpec(spec.grid, spec.group, spec.kind, {**spec.params, "i": i}, command=spec.command,
                     max_attempts=10) for i, spec in enumerate(specs)]
    store.submit(GridSpec("c", (GroupSpec("g"),), tuple(specs)))
    backoff = 1.0
    workers = [start_worker(rig, 0, f"w{i}", tmp_path, "--slots", "2", "--heartbeat", "0.5", "--lease", "6",
                            "--retry-backoff", str(backoff), "--quarantine-after", "100") for i in range(3)]
    deadline = time.monotonic() + 180
    while store.counts()["c"]["succeeded"] < len(specs) and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.2, 0.8))
        if rng.random() < 0.5:
            victim = rng.choice(workers)
            os.kill(victim.pid, signal.SIGSTOP)
            time.sleep(rng.uniform(0.2, 1.2))  # well under lease/2: its jobs are not fenced
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
    assert max(late)[0] < 4.0, sorted(late)[-5:]


def test_sigkilled_worker_leaves_no_job_process(tmp_path: Path, out: Path) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("k", (GroupSpec("g"),), tuple(jobs_of("k", "g", out, [60, 60], "child"))))
    worker = start_worker(rig, 0, "w", tmp_path, "--slots", "2")
    assert wait_until(lambda: len(started(out)) == 2, 30)
    pids = [pid for record in started(out).values() for pid in record["pids"]]
    assert len(pids) == 4 and all(alive(p) for p in pids)
    worker.kill()
    worker.wait()
    assert wait_until(lambda: not [p for p in pids if alive(p)], 5), "a job process survived SIGKILL of its worker"


def test_stopped_worker_is_fenced_and_its_job_is_not_recorded_twice(tmp_path: Path, out: Path) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("s", (GroupSpec("g"),), tuple(jobs_of("s", "g", out, [4.0]))))
    stale = start_worker(rig, 0, "stale", tmp_path)
    assert wait_until(lambda: (1, 1) in started(out), 30)
    first_pid = started(out)[(1, 1)]["pids"][0]
    os.kill(stale.pid, signal.SIGSTOP)
    try:
        # Its supervisor kills the job once the lease can no longer be renewed (lease/2)...
        assert wait_until(lambda: not alive(first_pid), 5)
        other = start_worker(rig, 0, "other", tmp_path)
        # ...and another worker declares it dead after a lease on its own clock and reruns the job.
        assert wait_until(lambda: (1, 2) in started(out), 30)
    finally:
        os.kill(stale.pid, signal.SIGCONT)
    # it learns it was declared dead and rejoins as the next incarnation of its name
    assert wait_until(lambda: "rejoined as incarnation 2" in (tmp_path / "stale.log").read_text(), 30)
    assert wait_until(lambda: store.counts()["s"]["succeeded"] == 1, 30)
    assert stop([other]) == [0]
    assert [a["outcome"] for a in store.attempts(1)] == ["lost", "succeeded"]
    assert not list(out.glob("*.overlap"))
    assert "declared dead" in (tmp_path / "stale.log").read_text()
    # ...and serves on: alone now, it runs the next job
    store.submit(GridSpec("s2", (GroupSpec("g"),), tuple(jobs_of("s2", "g", out, [0.1]))))
    assert wait_until(lambda: store.counts()["s2"]["succeeded"] == 1, 30)
    assert stale.poll() is None and stop([stale]) == [0]
    assert next(w for w in store.workers() if w["name"] == "stale")["incarnation"] == 2


def test_dependencies_and_a_failed_dependency_blocks_with_a_reason(tmp_path: Path, out: Path, cli) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    first = jobs_of("d", "first", out, [0.2, 0.8, 0.4, 1.0])
    second = jobs_of("d", "second", out, [0.1, 0.1])
    store.submit(GridSpec("d", (GroupSpec("first"), GroupSpec("second", ("first",))), tuple(first + second)))
    broken = jobs_of("b", "a", out, [0.1], "fail", max_attempts=1) + jobs_of("b", "z", out, [0.1])
    store.submit(GridSpec("b", (GroupSpec("a"), GroupSpec("z", ("a",))), tuple(broken)))
    worker = start_worker(rig, 0, "w", tmp_path, "--slots", "3", "--idle-exit", "2")
    assert worker.wait(timeout=60) == 0
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


def test_sigterm_requeues_running_jobs_without_charging_them(tmp_path: Path, out: Path) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("t", (GroupSpec("g"),), tuple(jobs_of("t", "g", out, [30, 30], max_attempts=1))))
    worker = start_worker(rig, 0, "w", tmp_path, "--slots", "2")
    assert wait_until(lambda: len(started(out)) == 2, 30)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    jobs = store.jobs()
    assert [(j["state"], j["failures"], j["crashes"]) for j in jobs] == [("queued", 0, 0)] * 2
    assert all(not alive(pid) for r in started(out).values() for pid in r["pids"])
    # max_attempts is 1, yet the jobs run again: a drain is not the job's fault.
    again = start_worker(rig, 0, "w2", tmp_path, "--slots", "2")
    assert wait_until(lambda: len(started(out)) == 4, 30)
    assert stop([again]) == [0]


def test_drain_from_another_host_cancel_and_quarantine(tmp_path: Path, out: Path, cli) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("c", (GroupSpec("g"),), tuple(jobs_of("c", "g", out, [60]))))
    worker = start_worker(rig, 0, "w", tmp_path)
    assert wait_until(lambda: (1, 1) in started(out), 30)
    t0 = time.monotonic()
    assert cli(*rig.cli_args(), "cancel", "1").code == 0
    assert wait_until(lambda: store.jobs(ids=[1])[0]["state"] == "cancelled", 10)
    assert time.monotonic() - t0 < 5
    assert cli(*rig.cli_args(), "drain", "w").code == 0
    assert worker.wait(timeout=30) == 0
    # Three failures in a row quarantine a worker: it stops claiming and says why.
    store.submit(GridSpec("q", (GroupSpec("g"),), tuple(jobs_of("q", "g", out, [0.1] * 5, "fail", max_attempts=1))))
    bad = start_worker(rig, 0, "bad", tmp_path, "--quarantine-after", "3", "--idle-exit", "3")
    assert bad.wait(timeout=60) == 0
    assert store.counts()["q"]["failed"] == 3 and store.counts()["q"]["queued"] == 2
    workers = json.loads(cli(*rig.cli_args(), "status", "--json").out)["workers"]
    assert "3 job failures in a row" in next(w for w in workers if w["name"] == "bad")["reason"]


def test_gpus_are_given_out_exclusively_with_cuda_visible_devices(tmp_path: Path, out: Path) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    jobs = (jobs_of("gpu", "one", out, [0.5] * 4, gpus=1) + jobs_of("gpu", "two", out, [0.5] * 2, gpus=2, cpus=3)
            + jobs_of("gpu", "four", out, [0.1], gpus=4))
    store.submit(GridSpec("gpu", (GroupSpec("one"), GroupSpec("two"), GroupSpec("four")), tuple(jobs)))
    cmd = [sys.executable, "-m", "memq", *rig.cli_args(), "worker", "--gpus", "0,1,2", "--slots", "0",
           "--idle-exit", "2", *FAST]
    assert subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=120).returncode == 0
    runs = started(out)
    assert len(runs) == 6 and store.counts()["gpu"]["queued"] == 1  # 4 GPUs never fit a 3-GPU node
    ends = {int(p.name.split(".")[0]): json.loads(p.read_text())["end"] for p in out.glob("*.end")}
    spans = [(r["start"], ends[job], set(r["gpus"].split(","))) for (job, _), r in runs.items()]
    assert sorted(len(g) for *_, g in spans) == [1, 1, 1, 1, 2, 2]
    # Each job gets the CPU threads it asked for (default 1), not one per core.
    assert sorted(r["threads"] for r in runs.values()) == ["1", "1", "1", "1", "3", "3"]
    for i, (s1, e1, g1) in enumerate(spans):
        for s2, e2, g2 in spans[i + 1:]:
            if s1 < e2 and s2 < e1:
                assert not g1 & g2, "two running jobs shared a GPU"


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


def test_a_command_that_cannot_be_executed_fails_at_once_and_says_why(tmp_path: Path, cli) -> None:
    """Missing program, a file without the x bit, an argument over the kernel's limit: permanent
    failures at the first attempt, with the system's reason in the job's log and in `memq status`."""
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    plain = tmp_path / "not-executable.sh"
    plain.write_text("#!/bin/sh\necho hi\n")
    argvs = [[str(tmp_path / "no-such-program")], [str(plain)], ["echo", "x" * 200_000]]
    specs = tuple(JobSpec("u", "g", "command", {"i": i}, command=argv) for i, argv in enumerate(argvs))
    store.submit(GridSpec("u", (GroupSpec("g"),), specs))
    worker = start_worker(rig, 0, "w", tmp_path, "--idle-exit", "1", "--quarantine-after", "10")
    assert worker.wait(timeout=60) == 0
    why = ["No such file or directory", "Permission denied", "Argument list too long"]
    for job, argv, expected in zip(store.jobs(), argvs, why, strict=True):
        assert (job["state"], job["attempt"]) == ("failed", 1), job
        assert job["reason"] == f"cannot execute {argv[0]!r}: {expected}"
        log = cli(*rig.cli_args(), "logs", job["id"]).out
        assert log.splitlines()[-1] == f"# memq: {job['reason']}; not retried"
        assert "# memq: argv " in log
    failures = json.loads(cli(*rig.cli_args(), "status", "--json").out)["recent_failures"]
    assert sorted(f["reason"] for f in failures) == sorted(j["reason"] for j in store.jobs())


def test_a_job_log_ends_with_how_the_attempt_ended(tmp_path: Path, out: Path, cli) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("e", (GroupSpec("g"),), tuple(jobs_of("e", "g", out, [0.1, 30]))))
    worker = start_worker(rig, 0, "w", tmp_path, "--slots", "2")
    assert wait_until(lambda: (2, 1) in started(out) and store.counts()["e"]["succeeded"] == 1, 30)
    assert cli(*rig.cli_args(), "cancel", "2").code == 0
    assert wait_until(lambda: store.counts()["e"]["cancelled"] == 1, 30)
    assert stop([worker], tmp_path) == [0]
    first = cli(*rig.cli_args(), "logs", "1").out.splitlines()[1:]  # after the "==> job 1 attempt 1" title
    assert first[0].startswith("# memq: job 1 attempt 1 on ") and first[1].startswith("# memq: argv ")
    assert re.fullmatch(r"# memq: ended: exit code 0, after \d+\.\ds", first[-1])
    last = cli(*rig.cli_args(), "logs", "2").out.splitlines()[-1]
    assert re.fullmatch(r"# memq: stopped: cancelled, killed by signal SIGTERM, after \d+\.\ds", last)


def test_logs_follow_a_job_across_attempts(tmp_path: Path, out: Path, cli) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    code = ("import os, sys; k = os.environ['MEMQ_ATTEMPT']; print('attempt', k, 'of', os.environ['MEMQ_JOB_ID']);"
            "sys.exit(0 if k == '2' else 5)")
    job = JobSpec("l", "g", "command", {}, command=[sys.executable, "-c", code])
    store.submit(GridSpec("l", (GroupSpec("g"),), (job,)))
    worker = start_worker(rig, 0, "w", tmp_path, "--idle-exit", "1")
    followed = cli(*rig.cli_args(), "logs", "1", "-f")  # returns once the job has ended
    assert worker.wait(timeout=60) == 0
    assert followed.code == 0
    assert followed.out.index("attempt 1 of 1") < followed.out.index("==> job 1 attempt 2") < followed.out.index(
        "attempt 2 of 1")
    assert cli(*rig.cli_args(), "logs", "1", "--attempt", "1").out.count("attempt 2 of 1") == 0
    assert cli(*rig.cli_args(), "logs", "99").code == 2


def test_a_database_outage_neither_stops_the_worker_nor_loses_its_job(tmp_path: Path, out: Path) -> None:
    import sqlalchemy as sa

    from ..conftest import make_rig

    rig = make_rig("postgres", tmp_path)
    admin = sa.create_engine(rig.db.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    database = rig.db.rsplit("/", 1)[1]
    try:
        store = rig.store()
        store.submit(GridSpec("o", (GroupSpec("g"),), tuple(jobs_of("o", "g", out, [6.0, 0.5]))))
        worker = start_worker(rig, 0, "w", tmp_path, "--heartbeat", "0.5", "--lease", "30")
        assert wait_until(lambda: (1, 1) in started(out), 30)
        with admin.connect() as conn:  # the server goes away for 3 s, as in a restart
            conn.execute(sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                         {"d": database})
            time.sleep(3)
            conn.execute(sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        store.backend.dispose()  # (this process's connections were ended too)
        assert wait_until(lambda: store.counts()["o"]["succeeded"] == 2, 60), (tmp_path / "w.log").read_text()
        assert worker.poll() is None  # still serving
        assert stop([worker], tmp_path) == [0]
        log = (tmp_path / "w.log").read_text()
        assert "database unavailable" in log
        jobs = {job["id"]: job for job in store.jobs(grid="o")}
        assert all(job["attempt"] == 1 and job["crashes"] == 0 for job in jobs.values())  # nothing ran twice
        assert sorted(started(out)) == [(1, 1), (2, 1)]
    finally:
        admin.dispose()
        for fn in rig.cleanup:
            fn()


def claim_times(store, grid: str) -> list[float]:
    """When each job of ``grid`` was claimed: jobs claimed in one transaction share the time."""
    return [a["started_at"] for job in store.jobs(grid=grid) for a in store.attempts(job["id"])]


def test_short_jobs_are_claimed_ahead_and_still_run_one_per_slot(tmp_path: Path, out: Path) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("short", (GroupSpec("g"),), tuple(jobs_of("short", "g", out, [0] * 24))))
    worker = start_worker(rig, 0, "w", tmp_path, "--claim-ahead", "30", "--idle-exit", "1")
    assert worker.wait(timeout=120) == 0
    assert store.counts()["short"]["succeeded"] == 24
    times = claim_times(store, "short")
    assert len(times) == 24 and len(set(times)) <= 8  # most transactions claimed several jobs
    runs = sorted((r["start"], json.loads((out / f"{job}.{attempt}.end").read_text())["end"])
                  for (job, attempt), r in started(out).items())
    assert len(runs) == 24
    assert all(start >= end for (_, end), (start, _) in itertools.pairwise(runs)), "one slot ran two jobs at once"
    # --claim-ahead 0: one job per transaction
    store.submit(GridSpec("single", (GroupSpec("g"),), tuple(jobs_of("single", "g", out, [0] * 6))))
    worker = start_worker(rig, 0, "w", tmp_path, "--claim-ahead", "0", "--idle-exit", "1")
    assert worker.wait(timeout=120) == 0
    assert len(set(claim_times(store, "single"))) == 6


def test_a_stopping_worker_gives_back_the_jobs_it_claimed_ahead_uncharged(tmp_path: Path, out: Path) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("t", (GroupSpec("g"),), tuple(jobs_of("t", "g", out, [0.2] * 30, max_attempts=1))))
    worker = start_worker(rig, 0, "w", tmp_path, "--claim-ahead", "30")
    assert wait_until(lambda: len(started(out)) >= 3, 60)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    jobs = store.jobs(grid="t")
    queued = [j for j in jobs if j["state"] == "queued"]
    assert {j["state"] for j in jobs} == {"succeeded", "queued"}
    assert all((j["failures"], j["crashes"]) == (0, 0) for j in queued)
    given_back = [j for j in queued if j["attempt"] == 1 and (j["id"], 1) not in started(out)]
    assert given_back, "the worker had claimed ahead"
    assert {store.attempts(j["id"])[0]["reason"] for j in given_back} == {"worker stopped before starting it"}
    # max_attempts is 1, yet they run: giving them back was not their fault
    again = start_worker(rig, 0, "w2", tmp_path, "--idle-exit", "1")
    assert again.wait(timeout=120) == 0
    assert store.counts()["t"]["succeeded"] == 30
