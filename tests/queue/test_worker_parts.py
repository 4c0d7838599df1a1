"""The worker's pieces one at a time: the supervisor line protocol (with real supervisor processes),
the job environment, the outcome policy, the reaper, and the database seam."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memq import paths
from memq.context import JobContext
from memq.errors import Fenced as Superseded
from memq.jobenv import EXIT_PERMANENT, JobEnv
from memq.options import RootOptions
from memq.root import open_store
from memq.spec import GridSpec, GroupSpec, JobSpec
from memq.store.types import Capacity, Claim
from memq.testing import claim_context, job_variables
from memq.worker.launch import Gone, Supervised, launch_message
from memq.worker.outcome import OutcomePolicy, Verdict
from memq.worker.protocol import (
    Exited,
    Fenced,
    Killed,
    Launch,
    LineReader,
    Renew,
    Started,
    Stop,
    Unstartable,
    decode,
    encode,
)
from memq.worker.reaper import Reaper

from ..conftest import Rig

REPO = Path(__file__).parents[2]
MESSAGES = [
    Launch(argv=["sh", "-c", "echo 'a b'\nexit 0"], env={"X": "ü\tb\\n"}, cwd="/tmp", log="/tmp/log.txt",
           fence_after=1.5, term_grace=2.0, header="# memq: job 1"),
    Renew(), Stop("requeued", kill=True), Stop("cancelled"), Stop(),
    Started(123), Exited(0), Exited(-9), Fenced(), Killed("worker_gone", -9),
    Unstartable("cannot execute 'nope': No such file or directory"),
]


def same(got: object, expected: object) -> bool:
    """Equal and of the same message type (messages are tuples: ``Renew() == Fenced()``)."""
    return type(got) is type(expected) and got == expected


def test_every_message_is_one_line_and_reads_back_from_chunks_split_anywhere() -> None:
    data = b"".join(encode(message) for message in MESSAGES)
    assert data.count(b"\n") == len(MESSAGES)  # the argv's newline is escaped inside the launch line
    for size in (1, 5, 64, len(data)):
        reader = LineReader()
        got = [message for i in range(0, len(data), size) for message in reader.feed(data[i:i + size])]
        assert len(got) == len(MESSAGES) and all(map(same, got, MESSAGES))
    assert same(decode(encode(Killed("worker gone", -9))), Killed("worker_gone", -9))  # one word on the wire
    with pytest.raises(ValueError, match="not a memq supervisor message"):
        decode(b"hello 1")


def supervise(tmp: Path, code: str, fence_after: float = 30.0, supervisor: Supervised | None = None,
              **launch: object) -> Supervised:
    """A job running ``code`` under ``supervisor`` (a new one if None), logging to tmp/log.txt."""
    supervisor = supervisor or Supervised()
    supervisor.send(Launch(**{"argv": [sys.executable, "-c", code], "env": dict(os.environ), "cwd": str(tmp),
                              "log": str(tmp / "log.txt"), "fence_after": fence_after, "term_grace": 5.0,
                              "header": "# head", **launch}))
    return supervisor


LAST_WORDS = (Exited, Fenced, Killed, Unstartable)


def reports(supervisor: Supervised, *, until: type | tuple[type, ...] = LAST_WORDS,
            timeout: float = 30.0) -> list[object]:
    """What the supervisor says until it says an ``until`` (by default: how its job ended)."""
    said: list[object] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = supervisor.read()
        assert got is not None, f"the supervisor exited ({supervisor.proc.wait()}) after saying {said}"
        said += got
        if any(isinstance(message, until) for message in said):
            return said
        time.sleep(0.02)
    raise AssertionError(f"the supervisor said only {said} in {timeout}s")


def test_the_supervisor_reports_the_start_and_the_exit_code_and_logs_the_output(tmp_path: Path) -> None:
    said = reports(supervise(tmp_path, "import sys; print('hi'); sys.exit(3)"))
    assert len(said) == 2 and isinstance(said[0], Started) and same(said[1], Exited(3))
    head, argv, output, end = (tmp_path / "log.txt").read_text().splitlines()
    assert (head, argv, output) == ("# head", f"# memq: argv {sys.executable} -c 'import sys; print('\"'\"'hi'\"'\"'); "
                                              "sys.exit(3)'", "hi")
    assert re.fullmatch(r"# memq: ended: exit code 3, after \d+\.\ds", end)


def test_the_supervisor_stops_on_request_and_fences_a_job_whose_lease_is_not_renewed(tmp_path: Path) -> None:
    sleeper = "import time; time.sleep(60)"
    stopped = supervise(tmp_path, sleeper)
    reports(stopped, until=Started)
    stopped.send(Stop("cancelled", kill=True))
    assert same(reports(stopped)[-1], Killed("cancelled", -9))

    fence_after = 1.0
    renewed = supervise(tmp_path, sleeper, fence_after=fence_after)
    reports(renewed, until=Started)
    for _ in range(20):  # renewals for twice fence_after, ten per fence_after (a loaded machine delays some)
        renewed.send(Renew())
        time.sleep(fence_after / 10)
    renewed.send(Stop("requeued"))
    assert same(reports(renewed)[-1], Killed("requeued", -15))  # SIGTERM

    stalled = supervise(tmp_path, sleeper, fence_after=fence_after)
    begun = time.monotonic()
    assert same(reports(stalled)[-1], Fenced())
    assert time.monotonic() - begun < 25  # (fenced after fence_after; the cap tells it from never)


def test_a_job_reads_back_exactly_what_its_worker_set(tmp_path: Path) -> None:
    env = JobEnv(job_id=7, attempt=2, grid="g", group="a", kind="mem.train", repeat=1, root=tmp_path,
                 params={"LR": 0.1, "DATASET.ROIS": ["w_3"], "name": "x y"}, job_dir=tmp_path / "j",
                 scratch_dir=tmp_path / "s", gpus=[2, 0], from_scratch=True, db="postgresql://h/q", key="k", cpus=4,
                 sync=True)
    variables = env.to_env()
    assert JobEnv.from_env(variables) == env
    ctx = JobContext.from_env(variables)
    assert isinstance(ctx, JobContext) and (ctx.job_id, ctx.params, ctx.gpus, ctx.db) == (7, env.params, [2, 0], env.db)
    assert variables["MEMQ_PARAM_DATASET_ROIS"] == '["w_3"]' and variables["MEMQ_PARAM_NAME"] == "x y"
    assert variables["CUDA_VISIBLE_DEVICES"] == "2,0" and variables["OMP_NUM_THREADS"] == "4"
    assert JobEnv.from_env({**variables, "OMP_NUM_THREADS": "4,2"}).cpus == 1  # OpenMP's nested form


def test_a_real_worker_gives_its_job_the_environment_and_directories_of_memq_jobenv(tmp_path: Path) -> None:
    root, scratch, dump = tmp_path / "root", tmp_path / "scratch", tmp_path / "env.json"
    store = open_store(RootOptions(root=str(root), db_mode="local"), create=True)
    code = f"import json, os; json.dump(dict(os.environ), open({str(dump)!r}, 'w'))"
    spec = JobSpec("g", "a", "command", {"lr": 0.5}, command=[sys.executable, "-c", code], cpus=2)
    store.submit(GridSpec("g", (GroupSpec("a"),), (spec,)))
    subprocess.run([sys.executable, "-m", "memq", "--root", str(root), "worker", "--gpus", "none", "--max-jobs", "1",
                    "--scratch", str(scratch), "--no-sync"], cwd=REPO, check=True, capture_output=True, timeout=120)
    job = store.jobs()[0]
    got = JobEnv.from_env(json.loads(dump.read_text()))
    assert got == JobEnv(job_id=job["id"], attempt=1, grid="g", group="a", kind="command", params={"lr": 0.5},
                         repeat=0, job_dir=paths.job_dir(root, "g", job["id"], 1), root=root, key=spec.key, cpus=2,
                         scratch_dir=paths.scratch_dir(scratch, root, "g", job["id"], 1))
    assert got.job_dir.is_dir() and got.scratch_dir.is_dir()
    assert paths.log_file(root, "g", job["id"], 1).read_text().startswith(f"# memq: job {job['id']} attempt 1 ")


def test_a_test_rig_claims_as_the_worker_does(tmp_path: Path) -> None:
    store = open_store(RootOptions(root=str(tmp_path / "root"), db_mode="local"), create=True)
    store.submit(GridSpec("g", (GroupSpec("a"),), (JobSpec("g", "a", "mem.train", {"x": 1}),)))
    me = store.register_worker("rig", socket.gethostname(), os.getpid(), "boot", [], 1, 60.0)
    ctx = claim_context(store, me, Capacity(slots=1), tmp_path / "scratch", [3])
    assert ctx is not None and ctx._store is store
    assert ctx.job_dir == paths.job_dir(store.root, "g", ctx.job_id, 1) and ctx.job_dir.is_dir()
    assert ctx.scratch_dir == paths.scratch_dir(tmp_path / "scratch", store.root, "g", ctx.job_id, 1)
    assert ctx.scratch_dir.is_dir()
    assert job_variables(ctx) == {k: v for k, v in ctx.to_env().items() if k.startswith("MEMQ_")}
    assert job_variables(ctx)["MEMQ_GPUS"] == "3" and "CUDA_VISIBLE_DEVICES" not in job_variables(ctx)
    assert claim_context(store, me, Capacity(slots=1), tmp_path / "scratch") is None


def test_a_superseded_attempt_s_job_context_writes_raise_fenced(rig: Rig, tmp_path: Path) -> None:
    """A job's own writes to the queue (memq.context) name its attempt. Once its worker was declared
    dead - the job requeued as lost and claimed again by a worker on the other host - every write of
    the old attempt raises Fenced and changes nothing; the new attempt's writes go through."""
    store, elsewhere = rig.store(0), rig.store(1)
    store.submit(GridSpec("f", (GroupSpec("a"),), (JobSpec("f", "a", "command", {}, command=["true"]),)))
    first = store.register_worker("one", "host-a", 1, "boot", [], 1, 60.0)
    old = claim_context(store, first, Capacity(slots=1), tmp_path / "scratch-a")
    kept, stale = old.job_dir / "kept.pt", old.job_dir / "stale.pt"
    kept.write_bytes(b"weights of attempt 1")
    stale.write_bytes(b"written after it was superseded")
    old.register_checkpoint(kept, metric=0.5, step=1)  # while it is the job's attempt, all goes through
    old.report_progress(force=True, epoch=1)
    old.record_metrics(val=0.5)
    heartbeat = elsewhere.worker_heartbeats()[first.id][0]
    assert elsewhere.declare_dead(first.id, heartbeat) == [old.job_id]  # requeued as lost
    with pytest.raises(Superseded):
        old.report_progress(force=True, epoch=2)  # (also while the job waits in the queue)
    second = elsewhere.register_worker("two", "host-b", 1, "boot", [], 1, 60.0)
    new = claim_context(elsewhere, second, Capacity(slots=1), tmp_path / "scratch-b")
    assert (new.job_id, new.attempt) == (old.job_id, 2)
    writes = {"register_checkpoint": lambda: old.register_checkpoint(stale, metric=0.9, step=2),
              "report_progress": lambda: old.report_progress(force=True, epoch=3),
              "record_metrics": lambda: old.record_metrics(val=0.9),
              "unregister_checkpoint": lambda: old.unregister_checkpoint(kept)}
    for name, write in writes.items():
        with pytest.raises(Superseded, match=f"job {old.job_id} attempt 1"):
            write()
            pytest.fail(f"{name} of a superseded attempt went through")
    job = store.jobs(ids=[old.job_id])[0]
    assert (job["state"], job["attempt"], job["progress"], job["metrics"]) == ("running", 2, None, {"val": 0.5})
    assert [(c["path"], c["attempt"]) for c in store.checkpoints(job_ids=[old.job_id])] == [(str(kept), 1)]
    newer = new.job_dir / "kept.pt"
    newer.write_bytes(b"weights of attempt 2")
    new.register_checkpoint(newer, metric=0.7, step=1)
    new.report_progress(force=True, epoch=1)
    new.record_metrics(val=0.7)
    new.unregister_checkpoint(kept)  # (a checkpoint of the job, whichever attempt wrote it)
    job = store.jobs(ids=[old.job_id])[0]
    assert (job["progress"], job["metrics"]) == ({"epoch": 1}, {"val": 0.7})
    assert [(c["path"], c["attempt"]) for c in store.checkpoints(job_ids=[old.job_id])] == [(str(newer), 2)]


def test_two_roots_on_one_node_keep_their_scratch_apart(tmp_path: Path) -> None:
    """Job 1 of grid g in two roots, claimed with one scratch: each attempt gets its own directory."""
    dirs = []
    for name in ("lab-a/root", "lab-b/root"):
        store = open_store(RootOptions(root=str(tmp_path / name), db_mode="local"), create=True)
        store.submit(GridSpec("g", (GroupSpec("a"),), (JobSpec("g", "a", "mem.train", {"x": 1}),)))
        me = store.register_worker("rig", socket.gethostname(), os.getpid(), "boot", [], 1, 60.0)
        ctx = claim_context(store, me, Capacity(slots=1), tmp_path / "scratch")
        assert ctx is not None and (ctx.grid, ctx.job_id, ctx.attempt) == ("g", 1, 1)
        dirs.append(ctx.scratch_dir)
    assert dirs[0] != dirs[1] and all(d.is_dir() and d.is_relative_to(tmp_path / "scratch") for d in dirs)


def test_launching_renders_a_command_over_the_workers_environment(tmp_path: Path) -> None:
    env = JobEnv(job_id=4, attempt=1, grid="g", group="a", kind="command", params={"lr": 0.5}, repeat=0,
                 job_dir=tmp_path / "j", scratch_dir=tmp_path / "s", root=tmp_path)
    inherited = {"PATH": "/bin", "MEMQ_DB": "postgresql://h/q", "CUDA_VISIBLE_DEVICES": "0,1"}
    launch = launch_message(env, ["train", "{lr}", "{job_dir}/out"], inherited, fence_after=5, kill_grace=2,
                            header="# h")
    assert launch.argv == ["train", "0.5", f"{tmp_path / 'j'}/out"]
    assert launch.env == {**inherited, **env.to_env()} and launch.env["CUDA_VISIBLE_DEVICES"] == ""
    assert (launch.cwd, launch.log) == (str(tmp_path / "j"), str(tmp_path / "j" / "log.txt"))
    python_kind = launch_message(env, None, {}, fence_after=5, kill_grace=2, header="")
    assert python_kind.argv == [sys.executable, "-m", "memq.runner"]


def claim(attempt: int, job_id: int = 1) -> Claim:
    return Claim(job_id, attempt, "key", "g", "a", "command", {}, 0, ["true"], 0, 1, 0.0, False)


def test_the_outcome_policy_retries_with_doubling_back_off_and_quarantines_once() -> None:
    policy = OutcomePolicy(retry_backoff=30.0, quarantine_after=3)

    def judge(result: object, attempt: int = 1, ending: str | None = None) -> Verdict:
        return policy.judge(claim(attempt), result, ending=ending, elapsed=1.25, log=Path("/r/log.txt"))

    first = judge(Exited(1))
    assert (first.outcome.state, first.outcome.backoff, first.outcome.reason) == ("failed", 30.0, "exit code 1")
    assert first.note == "job 1 attempt 1: failed (exit code 1); log: /r/log.txt" and first.quarantine is None
    second = judge(Killed("x", -9), attempt=3)
    assert (second.outcome.backoff, second.outcome.reason) == (120.0, "killed by signal 9")
    final = judge(Exited(EXIT_PERMANENT), attempt=2)
    assert (final.outcome.state, final.outcome.backoff) == ("failed_final", 0.0)
    assert final.quarantine == "3 job failures in a row (last: job 1, exit code 78)" == policy.quarantined
    fourth = judge(Gone(-9), attempt=12)
    assert (fourth.outcome.backoff, fourth.outcome.reason, fourth.quarantine) == (30.0 * 64, "supervisor died (-9)",
                                                                                  None)
    requeued = judge(Exited(-15), ending="requeued")
    assert (requeued.outcome.state, requeued.outcome.exit_code, requeued.outcome.reason) == ("requeued", -15,
                                                                                            "worker stopped")
    assert judge(Fenced()).outcome.reason == "lease not renewed in time (worker stalled)"
    assert judge(Killed("cancelled", -15), ending="cancelled").outcome.state == "cancelled"
    assert policy.failures_in_a_row == 4  # ends the worker caused are not the job's failures
    success = judge(Exited(0))
    assert (success.outcome.state, success.note) == ("succeeded", "job 1 attempt 1: succeeded in 1.2s")
    assert policy.failures_in_a_row == 0


def test_the_reaper_declares_dead_a_busy_worker_whose_counter_stood_still_for_a_lease(tmp_path: Path) -> None:
    store = open_store(RootOptions(root=str(tmp_path / "root"), db_mode="local"), create=True)
    store.submit(GridSpec("g", (GroupSpec("a"),), (JobSpec("g", "a", "command", {}, command=["true"]),)))
    me, other, idle = (store.register_worker(name, "host", os.getpid(), "boot", [], 1, 60.0)
                       for name in ("me", "other", "idle"))
    _, taken = store.claim(other, Capacity(slots=1))
    reaper = Reaper(lease=0.3)
    assert reaper.reap(store, me.id) == [] and reaper.others_busy
    time.sleep(0.4)
    assert reaper.reap(store, me.id) == [f"worker {other.id} missed its lease: requeued jobs {taken.job_id}"]
    assert store.jobs(ids=[taken.job_id])[0]["state"] == "queued"
    assert store.worker_heartbeats()[idle.id][1] != "dead"  # it ran nothing: nobody waits for it


