"""grids/mem-heavy.yaml at demo scale: its groups, `each:` chains and `after:` edges, on synthetic
prepared data with tiny models, from the topyneck to the report - once in this process, once
through real workers that are killed on the way; both end with the same submission, byte for byte.

The data steps (prepare, features) are left out: their kinds have tests of their own on fake NSD
trees (tests/data), and synthetic data is what they would have made. Two subjects, one topyneck
regulariser; of the 111 models the whole brain and one ROI of atlas W (the atlas the pipeline
makes), the ensemble of the whole-brain scheme.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import yaml

from jobs.data.atlas_w import SOURCE_ATTR
from jobs.data.synth import synthesize
from jobs.mem.train.topk import RESUME_FILE
from memq.paths import job_dir

from ..mem.jobs_helpers import val_rows
from ..waiting import until
from .rig import REPO, Rig
from .test_kill_rerun import files, job_pid

GRID = "mem-heavy"
LEASE = 60  # as in test_kill_rerun: a job outliving its SIGKILLed worker must not pass for fenced
FAST = ["--heartbeat", "1", "--lease", str(LEASE), "--poll", "0.2", "--retry-backoff", "0", "--grace", "1"]
TIMEOUT = 1200
KEPT = ("topyneck", "gather", "wholebrain", "wholebrain-soup", "atlas-w", "all", "W", "soup", "predict", "combine",
        "report")
N_JOBS = 2 + 1 + 1 + 1 + 1 + 1 + 1 + 2 + 4 + 1 + 1


def demo_pipeline(data: Path, tmp: Path, params: dict[str, Any]) -> str:
    """grids/mem-heavy.yaml with its site paths in ``tmp``, tiny models and a smaller grid."""
    grid = yaml.safe_load((REPO / "grids" / "mem-heavy.yaml").read_text())
    groups = {g["name"]: g for g in grid["groups"]}
    grid["defaults"]["resources"] = {"gpus": 0}
    del grid["anchors"]
    output = tmp / "topyneck.pth"
    for group in groups.values():
        group.pop("resources", None)
        p = group.setdefault("params", {})
        if group.get("kind", "mem.train") in ("mem.train", "mem.topyneck"):
            p.update({**params, "DATASET.DIR": str(data)})
            p.pop("TRAINER.EARLY_STOP_PATIENCE", None)
            if "MODEL.TOPYNECK_PATH" in p:
                p["MODEL.TOPYNECK_PATH"] = str(output)
        for key, value in (("parts_dir", tmp / "topyneck-parts"), ("output", output), ("data_dir", data)):
            if key in p:
                p[key] = str(value)
    groups["topyneck"]["grid"] = {"DATASET.SUBJECTS": [["subj01"], ["subj02"]], "REGULARIZER.LAYER": [1.0e-4]}
    groups["topyneck"]["after"] = []
    groups["gather"]["params"]["DATASET.SUBJECTS"] = ["subj01", "subj02"]
    groups["all"]["repeat"] = 1
    groups["W"]["grid"] = {"DATASET.ROIS": [["w_1"]]}
    groups["atlas-w"]["params"].update(k=24, device="cpu")
    groups["soup"]["each"] = ["all", "W"]
    groups["combine"]["params"].update(out=str(tmp / "submission"), schemes=["all"])
    groups["report"]["params"].update(out=str(tmp / "report"), ensemble=str(tmp / "submission"))
    grid["groups"] = [groups[name] for name in KEPT]
    return yaml.safe_dump(grid, sort_keys=False)


def pipeline_rig(tmp: Path, params: dict[str, Any]) -> Rig:
    data = synthesize(tmp / "data", n_sessions=2, n_voxels=(200, 160), image_size=16).data_dir
    tiny = {k: v for k, v in params.items() if k != "DATASET.DIR"}
    tiny.update({"TRAINER.MAX_EPOCHS": 2, "TRAINER.LIMIT_TRAIN_BATCHES": 1.0, "TRAINER.LIMIT_VAL_BATCHES": 1.0})
    (tmp / "pipeline.yaml").write_text(demo_pipeline(data, tmp, tiny))
    rig = Rig(tmp)
    submitted = rig.memq("submit", tmp / "pipeline.yaml", log=tmp / "submit.log")
    assert submitted.wait(120) == 0, (tmp / "submit.log").read_text()
    assert len(rig.store.jobs(grid=GRID)) == N_JOBS
    return rig


def running(rig: Rig, group: str, *, fresh: bool) -> tuple[int, int] | None:
    """(id, pid) of a running job of ``group`` whose process runs, before its first progress report
    (``fresh``: its imports and model still ahead of it) or after it."""
    for row in rig.store.jobs(grid=GRID, states=["running"]):
        if row["group"].split(".")[0] == group and bool(row["progress"]) != fresh and (pid := job_pid(row["id"])):
            return row["id"], pid
    return None


def mid_training(rig: Rig, group: str) -> tuple[int, int] | None:
    """(id, pid) of a running training job of ``group`` that has written its resume file."""
    for row in rig.store.jobs(grid=GRID, states=["running"]):
        resume = job_dir(rig.root, GRID, row["id"], row["attempt"]) / RESUME_FILE
        if row["group"].split(".")[0] == group and resume.is_file() and (pid := job_pid(row["id"])):
            return row["id"], pid
    return None


def test_the_winning_recipe_runs_as_one_pipeline_and_killed_workers_change_no_byte(
        tmp_path: Path, params: dict[str, Any], processes) -> None:
    reference = pipeline_rig(tmp_path / "reference", params)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a job of one CPU under a worker (OMP_NUM_THREADS=1)
    try:
        assert reference.drain() == N_JOBS
    finally:
        torch.set_num_threads(threads)

    rig = pipeline_rig(tmp_path / "killed", params)
    log = rig.tmp / "workers.log"
    env = {**os.environ, "MEMQ_SCRATCH": str(rig.tmp / "scratch")}

    def worker(name: str) -> subprocess.Popen:
        with log.open("ab") as out:
            return processes.start([sys.executable, "-m", "memq", *rig.options(), "worker", "--gpus", "none",
                                    "--slots", "1", "--name", name, *FAST], cwd=REPO, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)

    workers = {name: worker(name) for name in ("a", "b")}
    # a job process killed mid-training (the next attempt resumes from its last epoch) ...
    killed, pid = until("a topyneck job past its first epoch", lambda: mid_training(rig, "topyneck"), TIMEOUT,
                        step=0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    # ... a worker killed with its job (requeued as lost when it comes back under its name) ...
    lost, pid = until("the whole-brain model starting", lambda: running(rig, "all", fresh=True), TIMEOUT)
    holder_id = rig.store.jobs(ids=[lost])[0]["worker_id"]
    holder = next(w["name"] for w in rig.store.workers() if w["id"] == holder_id)
    workers[holder].send_signal(signal.SIGKILL)
    workers[holder].wait()
    until(f"job {lost}'s process to die with its worker", lambda: job_pid(lost) is None, 5)
    workers[holder] = worker(holder)
    # ... and the combine job killed as it starts (its few seconds of work are a window too short to
    # hit for sure on a loaded machine; test_kill_rerun kills one at work)
    combine, pid = until("the combine job starting", lambda: running(rig, "combine", fresh=True), TIMEOUT)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)

    def finished() -> bool | None:
        rows = rig.store.jobs(grid=GRID)
        assert not [r for r in rows if r["state"] == "failed"], log.read_text()[-4000:]
        return all(r["state"] == "succeeded" for r in rows) or None

    until("the pipeline", finished, TIMEOUT)
    for job_id in (killed, combine):
        outcomes = [a["outcome"] for a in rig.store.attempts(job_id)]
        assert outcomes[0] == "failed" and outcomes[-1] == "succeeded", (job_id, outcomes)
    assert next(a["outcome"] for a in rig.store.attempts(lost)) == "lost"
    resumed = job_dir(rig.root, GRID, killed, len(rig.store.attempts(killed)))
    # it resumed: epoch 0 came from the resume file (no log at all: the kill came after the last epoch)
    assert not (resumed / "logs").exists() or [row["epoch"] for row in val_rows(resumed)] == [1.0]

    got, want = files(rig.tmp / "submission"), files(reference.tmp / "submission")
    assert sorted(got) == sorted(want) == ["ensemble.json", "scores.json", "subj01/lh_pred_test.npy",
                                           "subj01/rh_pred_test.npy", "subj02/lh_pred_test.npy",
                                           "subj02/rh_pred_test.npy"]
    assert [name for name in want if got[name] != want[name]] == []
    rows = {r["id"]: r for r in rig.store.jobs(grid=GRID)}
    by_key = {r["key"]: r for r in rows.values()}
    for subject in ("subj01", "subj02"):  # atlas W came from the whole-brain model's greedy soup
        with h5py.File(rig.tmp / "data" / f"{subject}.h5", "r") as f:
            assert f.attrs[SOURCE_ATTR] and "w_1" in f["rois"]
    soups = [r for r in rows.values() if r["group"].startswith("soup.")]
    assert sorted(by_key[s["params"]["source_job"]]["group"] for s in soups) == ["W", "all"]
    assert np.load(rig.tmp / "submission" / "subj01" / "lh_pred_test.npy").dtype == np.float32
    assert (rig.tmp / "report" / "index.html").is_file()
