"""`memq ensemble` with a real worker, killed at several points (the command, a predict job, the
worker itself with SIGKILL, the combine job) and run again, ends with the same files, byte for
byte, as an uninterrupted run."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

from ..waiting import until
from .rig import GRID, Rig, grid_text

# A generous lease: on a loaded machine a short one lets supervisors fence jobs that are fine, and
# a job outliving its SIGKILLed worker by a few seconds must not pass for one fenced (after lease / 2).
# No other worker waits for it to run out: a worker restarted under the same name takes over at once.
LEASE = 60
FAST = ["--heartbeat", "1", "--lease", str(LEASE), "--poll", "0.2", "--retry-backoff", "0", "--grace", "1"]
DERIVED = GRID + "-ensemble"
TIMEOUT = 400


def job_pid(job_id: int) -> int | None:
    """The pid of the job process (memq.runner) of ``job_id``, if it runs."""
    marker = f"MEMQ_JOB_ID={job_id}\0".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if b"memq.runner" in (entry / "cmdline").read_bytes() and marker in (entry / "environ").read_bytes():
                return int(entry.name)
    return None


def at_work(rig: Rig, stage: str = "", *, fresh: bool = False) -> tuple[int, int]:
    """(id, pid) of the first running job of ``stage`` (any stage if "") whose process runs: once
    it reported progress (it is at work, past its imports and model building), or with ``fresh``
    before that (its imports and model still ahead of it: seconds of work before it could end)."""
    def running() -> tuple[int, int] | None:
        for row in rig.store.jobs(grid=DERIVED, states=["running"]):
            if row["group"].startswith(stage) and bool(row["progress"]) != fresh and (pid := job_pid(row["id"])):
                return row["id"], pid
        return None

    return until(f"a running {stage or 'derived'} job", running, TIMEOUT)


def kill_job(rig: Rig, stage: str) -> int:
    """SIGKILL the job process of the first running job of ``stage`` at work; returns its id."""
    job_id, pid = at_work(rig, stage)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return job_id


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_killed_and_rerun_ensemble_writes_the_same_files(tmp_path: Path, params: dict[str, Any], cli) -> None:
    text = grid_text(params, all_repeats=1)
    rigs = {name: Rig(tmp_path / name) for name in ("reference", "killed")}
    for rig in rigs.values():
        (rig.tmp / "tgrid.yaml").write_text(text)
        rig.train(rig.tmp / "tgrid.yaml")

    reference = rigs["reference"]  # uninterrupted, its jobs run in this process
    result = cli(*reference.options(), "ensemble", reference.tmp / "tgrid.yaml", "--out", reference.tmp / "out",
                 "--no-wait")
    assert result.code == 0, result
    assert reference.drain() == 3 + 6 + 1

    rig = rigs["killed"]
    log = rig.tmp / "log.txt"
    worker_argv = ["worker", "--gpus", "none", "--slots", "2", "--name", "w", *FAST]
    worker = rig.memq(*worker_argv, log=log)
    try:
        command = [rig.tmp / "tgrid.yaml", "--out", rig.tmp / "out", "--poll", "0.2"]
        first = rig.memq("ensemble", *command, log=log)
        until("a soup", lambda: rig.store.jobs(grid=DERIVED, states=["succeeded"]), TIMEOUT)
        first.kill()  # the command dies while its jobs run on
        first.wait()
        killed = [kill_job(rig, "predict")]
        until("the killed job's failure on record", lambda: rig.store.attempts(killed[0])[0]["outcome"], TIMEOUT)
        # the worker dies mid-job (node crash, OOM killer): its job process dies with it, at once
        # (the job had seconds of work left; its supervisor would fence it only after lease / 2),
        # and the worker started again under its name (systemd's Restart=) requeues what it held
        lost, pid = at_work(rig, fresh=True)
        attempt = rig.store.jobs(ids=[lost])[0]["attempt"]
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        until(f"job {lost}'s process (pid {pid}) to die with its worker", lambda: job_pid(lost) is None, 5)
        assert rig.store.jobs(ids=[lost])[0]["state"] == "running"  # the queue learns it from the next "w"
        worker = rig.memq(*worker_argv, log=log)
        second = rig.memq("ensemble", *command, log=log)
        killed.append(kill_job(rig, "combine"))
        assert second.wait(timeout=TIMEOUT) == 0, log.read_text()[-3000:]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    for job_id in killed:
        outcomes = [a["outcome"] for a in rig.store.attempts(job_id)]
        assert outcomes[0] == "failed" and outcomes[-1] == "succeeded", (job_id, outcomes)
    outcomes = [a["outcome"] for a in rig.store.attempts(lost)]
    assert outcomes[attempt - 1] == "lost" and outcomes[-1] == "succeeded", (lost, attempt, outcomes)
    assert rig.store.jobs(ids=[lost])[0]["crashes"] == 1
    assert "ensemble written to" in log.read_text()
    got, want = files(rig.tmp / "out"), files(reference.tmp / "out")
    assert sorted(got) == sorted(want) == ["ensemble.json", "scores.json", "subj01/lh_pred_test.npy",
                                           "subj01/rh_pred_test.npy", "subj02/lh_pred_test.npy",
                                           "subj02/rh_pred_test.npy"]
    assert [name for name in want if got[name] != want[name]] == []
