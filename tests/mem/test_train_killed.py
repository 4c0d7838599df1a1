"""A `mem.train` job under a real `memq worker` that is SIGKILLed mid-training: another worker
declares it dead, requeues the job, and the next attempt resumes where the last one saved and
trains the same weights, bit for bit, as the same job trained without a break."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from jobs.mem.train.topk import RESUME_FILE
from memq.paths import job_dir

from ..waiting import until
from .jobs_helpers import result, val_rows
from .queue_rig import GRID, QueueRig

REPO = Path(__file__).parents[2]
MAX_EPOCHS = 6
LEASE = 6
TIMEOUT = 300



def worker(rig: QueueRig, name: str, tmp: Path) -> subprocess.Popen:
    env = {**os.environ, "MEMQ_SCRATCH": str(tmp / f"scratch-{name}")}
    log = (tmp / f"{name}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "memq", "--root", str(rig.root), "worker", "--gpus", "none", "--slots", "1",
         "--name", name, "--heartbeat", "1", "--lease", str(LEASE), "--poll", "0.2", "--retry-backoff", "0"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_a_killed_worker_s_job_resumes_from_its_last_checkpoint(tmp_path: Path, job_params: dict[str, Any]) -> None:
    rig = QueueRig(tmp_path)
    params = {**job_params, "DATASET.ROIS": ["E", "V"], "TRAINER.MAX_EPOCHS": MAX_EPOCHS,
              "TRAINER.SAVE_TOP_K": 2, "TRAINER.RESUME_EVERY_S": 0}
    job_id = rig.submit("mem.train", params, group="killed")
    whole = rig.submit("mem.train", params, group="whole")  # the same job, left alone
    first_dir = job_dir(rig.root, GRID, job_id, 1)
    first = worker(rig, "first", tmp_path)
    try:
        def trained_two_epochs() -> int | None:
            progress = rig.job(job_id)["progress"] or {}
            epoch = progress.get("epoch")
            return epoch if epoch is not None and epoch >= 1 and (first_dir / RESUME_FILE).is_file() else None

        killed_at = until("two epochs of the first attempt", trained_two_epochs, TIMEOUT, step=0.2)
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = worker(rig, "second", tmp_path)
        try:
            until("both jobs to end", lambda: {rig.job(j)["state"] for j in (job_id, whole)} <= {"succeeded", "failed"},
                  2 * TIMEOUT, step=0.2)
        finally:
            second.terminate()
            second.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()

    job = rig.job(job_id)
    assert job["state"] == "succeeded", (tmp_path / "second.log").read_text()[-3000:]
    assert job["attempt"] == 2 and job["crashes"] == 1 and job["failures"] == 0
    epochs = [int(row["epoch"]) for row in val_rows(job_dir(rig.root, GRID, job_id, 2))]
    # the second attempt went on from the first one's last saved epoch (an epoch may end as we kill), not from 0
    assert 1 <= epochs[0] <= killed_at + 2 and epochs == list(range(epochs[0], MAX_EPOCHS))
    assert result(job_dir(rig.root, GRID, job_id, 2))["epochs"] == MAX_EPOCHS
    assert job["metrics"]["epochs"] == MAX_EPOCHS
    assert rig.job(whole)["attempt"] == 1
    # the final weights and optimiser state, and the top-k checkpoints
    final = [torch.load(job_dir(rig.root, GRID, j, a) / RESUME_FILE, weights_only=True) for j, a in
             ((job_id, 2), (whole, 1))]
    for part in ("state_dict", "optimizer_states"):
        assert same(final[0][part], final[1][part]), part
    killed, uninterrupted = weights(rig, job_id), weights(rig, whole)
    assert sorted(killed) == sorted(uninterrupted) and len(killed) == 2
    assert same(killed, uninterrupted)


def weights(rig: QueueRig, job_id: int) -> dict[int, dict[str, torch.Tensor]]:
    """Epoch -> weights of the job's registered top-k checkpoints."""
    return {row["step"]: torch.load(row["path"], weights_only=True) for row in rig.checkpoints(job_id)}


def same(a: Any, b: Any) -> bool:
    """Equal nested containers, tensors equal bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b
