"""`memq ensemble` with a real worker, killed at several points (the command, a predict job, the
combine job) and run again, ends with the same files, byte for byte, as an uninterrupted run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..waiting import until
from .rig import GRID, Rig, grid_text

REPO = Path(__file__).parents[2]
# a generous lease: on a loaded machine a short one lets supervisors fence jobs that are fine
FAST = ["--heartbeat", "1", "--lease", "20", "--poll", "0.2", "--retry-backoff", "0", "--grace", "1"]
DERIVED = GRID + "-ensemble"
TIMEOUT = 400


def memq(rig: Rig, *args: object, log: Path) -> subprocess.Popen:
    env = {**os.environ, "MEMQ_SCRATCH": str(rig.tmp / "worker-scratch")}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "memq", *rig.options(), *map(str, args)], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)



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


def kill_job(rig: Rig, stage: str) -> int:
    """SIGKILL the first running job of ``stage`` once it reported progress (it is at work, past
    its imports and model building); returns its id."""
    def running() -> tuple[int, int] | None:
        for row in rig.store.jobs(grid=DERIVED, states=["running"]):
            if row["group"].startswith(stage) and row["progress"] and (pid := job_pid(row["id"])):
                return row["id"], pid
        return None

    job_id, pid = until(f"a running {stage} job", running, TIMEOUT)
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
    worker = memq(rig, "worker", "--gpus", "none", "--slots", "2", "--name", "w", *FAST, log=log)
    try:
        command = [rig.tmp / "tgrid.yaml", "--out", rig.tmp / "out", "--poll", "0.2"]
        first = memq(rig, "ensemble", *command, log=log)
        until("a soup", lambda: rig.store.jobs(grid=DERIVED, states=["succeeded"]), TIMEOUT)
        first.kill()  # the command dies while its jobs run on
        first.wait()
        killed = [kill_job(rig, "predict")]
        second = memq(rig, "ensemble", *command, log=log)
        killed.append(kill_job(rig, "combine"))
        assert second.wait(timeout=TIMEOUT) == 0, log.read_text()[-3000:]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    for job_id in killed:
        outcomes = [a["outcome"] for a in rig.store.attempts(job_id)]
        assert outcomes[0] == "failed" and outcomes[-1] == "succeeded", (job_id, outcomes)
    assert "ensemble written to" in log.read_text()
    got, want = files(rig.tmp / "out"), files(reference.tmp / "out")
    assert sorted(got) == sorted(want) == ["ensemble.json", "scores.json", "subj01/lh_pred_test.npy",
                                           "subj01/rh_pred_test.npy", "subj02/lh_pred_test.npy",
                                           "subj02/rh_pred_test.npy"]
    assert [name for name in want if got[name] != want[name]] == []
