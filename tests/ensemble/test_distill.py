"""The light recipe and its distillation, demo-scale, through a real worker and the shipped grids
(grids/mem-light.yaml, grids/mem-light-distill.yaml with tiny settings on synthetic data).

One submit of the distillation grid runs it all: the teacher's model and soup, its train-split
predictions published as teacher `xvbaa`, then the student trained with LOSS.DARK, its soup,
predictions and submission. What
the student's loss saw is recomputed here, apart from the code under test: the teacher's rows read
from the store's files with NumPy, the targets from the subject files with h5py, SmoothL1 in NumPy,
the blend weights of the reference's formula, and the model at the weights each epoch started from
(its initial weights, then the registered checkpoint of epoch 0).
"""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from jobs.data.synth import synthesize
from jobs.mem.build import build
from jobs.mem.config import tiny
from memq.grid import load_grid
from memq.paths import job_dir

from ..mem.independent import predictions, read_targets
from ..waiting import until
from .rig import Rig

REPO = Path(__file__).parents[2]
BETA = 0.01  # LOSS.SMOOTH_L1_BETA
TEACHER = "xvbaa"  # the shipped grids' teacher name


def shipped(name: str, tmp_path: Path, params: dict[str, Any], groups: tuple[str, ...] | None = None) -> Path:
    """A shipped grid on CPUs (``groups`` of it; default all): its Mem group gets ``params`` in place
    of its site paths and weights (its own LOSS.DARK settings kept), the submission goes to tmp_path."""
    grid = yaml.safe_load((REPO / "grids" / name).read_text())
    del grid["anchors"]  # merged into the groups by the YAML loader
    grid["defaults"] = {"resources": {"gpus": 0}, "max_attempts": 1}
    grid["groups"] = [g for g in grid["groups"] if groups is None or g["name"] in groups]
    for group in grid["groups"]:
        group.pop("resources", None)
        if group["kind"] == "mem.train":
            kept = {k: v for k, v in group["params"].items() if k.startswith(("LOSS.", "DATASET.DARK"))}
            group["params"] = {**params, **kept}
        if group["kind"] == "mem.ensemble":
            group["params"]["out"] = str(tmp_path / f"out-{grid['name']}")
    path = tmp_path / name
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def smooth_l1(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    d = np.abs(pred - target)
    return np.where(d < BETA, 0.5 * d * d / BETA, d - 0.5 * BETA)


def epoch_logs(directory: Path) -> dict[int, dict[str, float]]:
    """epoch -> the TRAIN/dark/... values of the student's CSV log."""
    out: dict[int, dict[str, float]] = {}
    with (directory / "logs" / "csv" / "metrics.csv").open() as fh:
        for row in csv.DictReader(fh):
            values = {k: float(v) for k, v in row.items() if k.startswith("TRAIN/dark/") and v}
            if values:
                out.setdefault(int(row["epoch"]), {}).update(values)
    return out


def teacher_rows(data_dir: Path, subject: str, trials: np.ndarray) -> np.ndarray:
    """The stored teacher predictions of ``trials`` (every voxel), read with NumPy alone."""
    directory = data_dir / "dark" / TEACHER / "train"
    manifest = json.loads((directory / "manifest.json").read_text())
    with np.load(directory / manifest["index"]["file"]) as index:
        stored_trials, voxels = index[f"{subject}.trials"], index[f"{subject}.voxels"]
    values = np.load(directory / manifest["subjects"][subject]["file"]).astype(np.float64)
    assert np.array_equal(voxels, np.arange(values.shape[1]))  # a whole-brain teacher
    rows = [int(np.flatnonzero(stored_trials == g)[0]) for g in trials]
    return values[rows]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Data of its own: this test publishes teacher predictions into it."""
    return synthesize(tmp_path / "data", n_sessions=2, n_voxels=(120, 90), image_size=16).data_dir


def test_student_is_distilled_from_the_teachers_stored_train_predictions(rig: Rig, tmp_path: Path, data_dir: Path,
                                                                         cli) -> None:
    # one step per epoch over the whole train split and every voxel, no dropout or mapper noise,
    # no SYNC weights: each epoch's loss is a function of the weights it started from
    params = {**tiny(), "DATASET.DIR": str(data_dir), "DATASET.IMAGE_SIZE": 16, "TRAINER.BATCH_SIZE": 4096,
              "TRAINER.MAX_EPOCHS": 2, "TRAINER.LIMIT_TRAIN_BATCHES": 1.0, "TRAINER.LIMIT_VAL_BATCHES": 1.0,
              "TRAINER.SAVE_TOP_K": 2, "MODEL.MAX_TRAIN_VOXELS": 1000, "MODEL.COND.DROPOUT": 0.0,
              "MODEL.RETINA_MAPPER.SIGMA": 0.0, "LOSS.SYNC.USE": False, "OPTIMIZER.LR": 0.01,
              "OPTIMIZER.SCHEDULER.WARMUP_EPOCHS": 0}
    grid = shipped("mem-light-distill.yaml", tmp_path, {**params, "LOSS.DARK.MAX_EPOCH": 2})
    (student_params,) = [g["params"] for g in yaml.safe_load(grid.read_text())["groups"] if "params" in g
                         and "LOSS.DARK.USE" in g["params"]]
    assert (student_params["LOSS.DARK.USE"], student_params["DATASET.DARK"]) == (True, TEACHER)

    submitted = cli(*rig.options(), "submit", grid)  # no teacher predictions yet: the grid makes them
    assert submitted.code == 0, submitted.err
    log = tmp_path / "worker.log"
    worker = rig.memq("worker", "--gpus", "none", "--slots", "2", "--name", "w", "--poll", "0.2",
                      "--retry-backoff", "0", "--grace", "1", log=log)
    try:
        def done(grid: str) -> set[str] | None:
            states = {row["state"] for row in rig.store.jobs(grid=grid)}
            return states if states <= {"succeeded", "failed"} or "failed" in states else None

        assert until("teacher and student", lambda: done("mem-light-distill"), 1500, step=0.5) == {"succeeded"}, \
            log.read_text()[-3000:]
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert sorted(p.name for p in (tmp_path / "out-mem-light-distill" / "subj01").iterdir()) == [
        "lh_pred_test.npy", "rh_pred_test.npy"]

    (student,) = rig.store.jobs(grid="mem-light-distill", group="xvba-distill")
    logged = epoch_logs(job_dir(rig.root, "mem-light-distill", student["id"], student["attempt"]))
    assert sorted(logged) == [0, 1]
    built = build(student["params"], student["repeat"], [], rig.root)
    initial = {k: v.clone() for k, v in built.model.trainable_state_dict().items()}
    (first,) = [row for row in rig.store.checkpoints(job_ids=[student["id"]]) if row["step"] == 0]
    # epoch e starts from: the initial weights (the job's seed), then the weights after epoch 0
    starts = {0: initial, 1: torch.load(first["path"], weights_only=True)}
    weights = {0: (0.0, 1.0), 1: (0.5, 0.5)}  # min(e/2, 1), max(1 - e/2, 0): the reference's, MAX_EPOCH 2
    for epoch, start in starts.items():
        for subject, (trials, pred) in predictions(built, start, "train").items():
            file_trials, target = read_targets(data_dir, subject, "train", None)
            assert np.array_equal(trials, file_trials)
            target_loss = smooth_l1(pred, target).mean()
            teacher_loss = smooth_l1(pred, teacher_rows(data_dir, subject, trials)).mean()
            seen = logged[epoch]
            assert seen[f"TRAIN/dark/{subject}/target"] == pytest.approx(target_loss, rel=1e-4)
            assert seen[f"TRAIN/dark/{subject}/teacher"] == pytest.approx(teacher_loss, rel=1e-4)
            w_target, w_teacher = weights[epoch]
            blend = w_target * target_loss + w_teacher * teacher_loss
            assert seen[f"TRAIN/dark/{subject}/blend"] == pytest.approx(blend, rel=1e-4)
            assert abs(target_loss - teacher_loss) > 1e-2 * target_loss  # the two are told apart


def test_submitting_the_student_before_its_teacher_is_one_line_and_exit_2(rig: Rig, tmp_path: Path,
                                                                           params: dict[str, Any], cli) -> None:
    store = Path(params["DATASET.DIR"]) / "dark" / TEACHER / "train"
    student = ("xvba-distill", "soup", "predict", "combine")
    for kept in (student, ("xvba", "xvba-soup", "teacher", *student)):
        grid = shipped("mem-light-distill.yaml", tmp_path, params, kept)
        text = yaml.safe_load(grid.read_text())  # no teacher, or one the student does not wait for
        next(g for g in text["groups"] if g["name"] == "xvba-distill").pop("after")
        grid.write_text(yaml.safe_dump(text, sort_keys=False))
        result = cli(*rig.options(), "submit", grid)
        assert result.code == 2, result
        (line,) = result.err.strip().splitlines()
        line_of_student = next(i for i, text in enumerate(grid.read_text().splitlines(), 1)
                               if text.strip() == "- name: xvba-distill")
        assert line.startswith(f"error: {grid}:{line_of_student}: DATASET.DARK {TEACHER}: no teacher predictions in "
                               f"{store}"), line
        assert "the `teacher` group of grids/mem-light.yaml, run first, or one in this grid" in line
        assert rig.store.jobs(grid="mem-light-distill") == []


@pytest.mark.parametrize(("name", "trained", "n_jobs"), [("mem-light.yaml", ["xvba"], 6),
                                                         ("mem-light-distill.yaml", ["xvba", "xvba-distill"], 8)])
def test_light_grids_train_the_references_models(name: str, trained: list[str], n_jobs: int, cli) -> None:
    result = cli("submit", REPO / "grids" / name, "--dry-run")
    assert result.code == 0, result.err
    assert f"{Path(name).stem}: {n_jobs} jobs (dry run, nothing written)" in result.out
    jobs = load_grid(REPO / "grids" / name).jobs
    models = [j for j in jobs if j.kind == "mem.train"]
    assert [(j.group, j.params.get("DATASET.ROIS")) for j in models] == [(group, None) for group in trained]
    assert all("MODEL.TOPYNECK_PATH" not in j.params for j in models)  # "nerfed": the topyneck trains along
    assert [j.params["split"] for j in jobs if j.kind == "mem.predict" and "dark" not in j.params] == [
        "predict", "val2"]
