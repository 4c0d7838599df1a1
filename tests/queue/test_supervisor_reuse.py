"""A supervisor runs job after job (memq/worker/supervisor.py): what one job was given, left behind
or was told never reaches the next, fencing counts from each job's own launch, and a worker killed
with reused supervisors still takes every job process with it. First one real supervisor process
driven over its pipes, then real `memq worker` processes (tests/queue/test_worker.py's helpers)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

from memq import paths
from memq.spec import GridSpec, GroupSpec
from memq.worker.launch import Supervised
from memq.worker.protocol import Exited, Fenced, Killed, Launch, Renew, Started, Stop, Unstartable

from ..conftest import Processes, Rig
from .test_worker import GATED, LEASE, alive, jobs_of, open_gate, start_worker, started, wait_until
from .test_worker_parts import reports, same, supervise

REPORT = ("import json, os, sys; print(json.dumps({'cwd': os.getcwd(), 'ppid': os.getppid(), "
          "'n': os.environ['N'], 'first_only': os.environ.get('FIRST_ONLY')})); sys.exit(int(os.environ['N']))")


def test_one_supervisor_runs_job_after_job_each_with_its_own_environment_directory_and_log(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if k != "FIRST_ONLY"}
    supervisor = Supervised()
    for n in range(4):
        folder = tmp_path / f"job{n}"
        folder.mkdir()
        env = {**base, "N": str(n), **({"FIRST_ONLY": "yes"} if n == 0 else {})}
        supervisor.send(Launch(argv=[sys.executable, "-c", REPORT], env=env, cwd=str(folder),
                               log=str(folder / "log.txt"), fence_after=30.0, header=f"# head {n}"))
        said = reports(supervisor)
        assert len(said) == 2 and isinstance(said[0], Started) and same(said[1], Exited(n))
        head, argv, output, end = (folder / "log.txt").read_text().splitlines()
        assert head == f"# head {n}" and argv.startswith(f"# memq: argv {sys.executable} -c ")
        assert re.fullmatch(rf"# memq: ended: exit code {n}, after \d+\.\ds", end)
        assert json.loads(output) == {"cwd": str(folder), "ppid": supervisor.proc.pid, "n": str(n),
                                      "first_only": "yes" if n == 0 else None}
        # late words for the job that ended (a heartbeat's renew, a stop that crossed its end) are dropped
        supervisor.send(Renew())
        supervisor.send(Stop("cancelled", kill=True))
    supervisor.send(Launch(argv=[str(tmp_path / "missing")], env=base, cwd=str(tmp_path), log=str(tmp_path / "u.txt"),
                           fence_after=30.0))
    assert same(reports(supervisor, until=Unstartable)[-1],
                Unstartable(f"cannot execute {str(tmp_path / 'missing')!r}: No such file or directory"))
    assert same(reports(supervise(tmp_path, "print('still here')", supervisor=supervisor))[-1], Exited(0))
    assert supervisor.proc.poll() is None
    supervisor.close(timeout=30)
    assert supervisor.proc.returncode == 0


def test_what_a_job_leaves_in_its_process_group_dies_at_its_end_and_the_next_job_runs_clean(tmp_path: Path) -> None:
    left = "import subprocess; print(subprocess.Popen(['sleep', '600']).pid)"  # exits at once, its child sleeps on
    supervisor = supervise(tmp_path, left)
    assert same(reports(supervisor)[-1], Exited(0))
    orphan = int((tmp_path / "log.txt").read_text().splitlines()[2])
    assert wait_until(lambda: not alive(orphan), 10), "a job's background child outlived the job"
    assert same(reports(supervise(tmp_path, "import sys; sys.exit(5)", supervisor=supervisor))[-1], Exited(5))
    assert (tmp_path / "log.txt").read_text().splitlines()[-1].startswith("# memq: ended: exit code 5")
    supervisor.close(timeout=30)


def test_fencing_counts_from_each_job_s_own_launch_on_a_reused_supervisor(tmp_path: Path) -> None:
    fence_after, sleeper = 1.0, "import time; time.sleep(60)"
    supervisor = supervise(tmp_path, "pass", fence_after=fence_after)
    assert same(reports(supervisor)[-1], Exited(0))
    time.sleep(2 * fence_after)  # idle for longer than fence_after: no job, nothing to fence
    supervise(tmp_path, sleeper, fence_after=fence_after, supervisor=supervisor)
    reports(supervisor, until=Started)
    for _ in range(20):  # renewed for twice fence_after: not fenced
        supervisor.send(Renew())
        time.sleep(fence_after / 10)
    supervisor.send(Stop("requeued"))
    assert same(reports(supervisor)[-1], Killed("requeued", -15))
    begun = time.monotonic()
    supervise(tmp_path, sleeper, fence_after=fence_after, supervisor=supervisor)  # never renewed
    assert same(reports(supervisor)[-1], Fenced())
    assert time.monotonic() - begun < 25
    assert same(reports(supervise(tmp_path, "import sys; sys.exit(3)", supervisor=supervisor))[-1], Exited(3))
    supervisor.close(timeout=30)


# -- through real workers ---------------------------------------------------------------------------

def test_a_worker_runs_its_jobs_on_one_supervisor_per_slot_each_job_in_its_own_environment(
        tmp_path: Path, processes: Processes) -> None:
    out = tmp_path / "out"
    out.mkdir()
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    specs = [dataclasses.replace(spec, params={**spec.params, **({"extra": "x"} if i % 2 == 0 else {})})
             for i, spec in enumerate(jobs_of("r", "g", out, [0.05] * 24))]
    store.submit(GridSpec("r", (GroupSpec("g"),), tuple(specs)))
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--slots", "2", "--idle-exit", "1")
    assert worker.wait(timeout=300) == 0
    assert store.counts()["r"]["succeeded"] == 24
    runs = started(out)
    supervisors = {record["ppid"] for record in runs.values()}
    assert len(supervisors) <= 2 and worker.pid not in supervisors
    for job in store.jobs():
        record = runs[(job["id"], 1)]
        i = job["params"]["i"]
        expected = {"MEMQ_PARAM_I": str(i), "MEMQ_PARAM_SECONDS": "0.05"}
        expected |= {"MEMQ_PARAM_EXTRA": "x"} if i % 2 == 0 else {}
        assert (record["env_job"], record["params"]) == (str(job["id"]), expected)
        assert record["cwd"] == str(paths.job_dir(rig.roots[0], "r", job["id"], 1))
        log = paths.log_file(rig.roots[0], "r", job["id"], 1).read_text().splitlines()
        assert log[0].startswith(f"# memq: job {job['id']} attempt 1 on ") and log[1].startswith("# memq: argv ")
        assert re.fullmatch(r"# memq: ended: exit code 0, after \d+\.\ds", log[-1]) and len(log) == 3


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_sigkilled_worker_takes_the_jobs_of_its_reused_supervisors_with_it(tmp_path: Path,
                                                                            processes: Processes) -> None:
    out = tmp_path / "out"
    out.mkdir()
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    quick, gated = jobs_of("k", "a", out, [0.05] * 4), jobs_of("k", "b", out, [GATED, GATED], "gate,child")
    store.submit(GridSpec("k", (GroupSpec("a"), GroupSpec("b", ("a",))), tuple(quick + gated)))
    worker = start_worker(processes, rig, 0, "w", tmp_path, "--slots", "2")
    assert wait_until(lambda: len(started(out)) == 6, 120)
    runs = started(out)
    first = {record["ppid"] for (job, _), record in runs.items() if job <= 4}
    later = [record for (job, _), record in runs.items() if job > 4]
    assert {record["ppid"] for record in later} <= first  # the gated jobs run on supervisors that ran jobs before
    pids = [pid for record in later for pid in record["pids"]]
    assert len(pids) == 4 and all(map(alive, pids)) and all(_ppid(pid) in first for pid in pids[::2])
    worker.kill()
    worker.wait()
    assert wait_until(lambda: not any(map(alive, [*pids, *first])), 30), "a job or supervisor outlived its worker"


def test_a_job_on_a_reused_supervisor_is_fenced_when_its_worker_stalls(tmp_path: Path, processes: Processes) -> None:
    out = tmp_path / "out"
    out.mkdir()
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    specs = jobs_of("f", "a", out, [0.05]) + jobs_of("f", "b", out, [GATED], "gate")
    store.submit(GridSpec("f", (GroupSpec("a"), GroupSpec("b", ("a",))), tuple(specs)))
    worker = start_worker(processes, rig, 0, "w", tmp_path)
    assert wait_until(lambda: (2, 1) in started(out), 120)
    supervisor = started(out)[(1, 1)]["ppid"]
    job = started(out)[(2, 1)]
    assert job["ppid"] == supervisor
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        assert wait_until(lambda: not alive(job["pids"][0]), LEASE * 5), "a stalled worker's job was not fenced"
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    assert wait_until(lambda: (2, 2) in started(out), 120)  # requeued uncharged, rerun by the same supervisor
    assert started(out)[(2, 2)]["ppid"] == supervisor and alive(supervisor)
    open_gate(out, 2, 2)
    assert wait_until(lambda: store.counts()["f"]["succeeded"] == 2, 60)
    assert [a["outcome"] for a in store.attempts(2)] == ["requeued", "succeeded"]
    assert not list(out.glob("*.overlap"))
