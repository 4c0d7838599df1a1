"""Prediction files of trained jobs made without models (jobs/mem/ensemble/artifacts.py layout), and an
independent NumPy computation of what the ensemble of them must be."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jobs.data.layout import N_SLOTS, list_subjects, open_subject, subject_path
from jobs.mem.data import roi_positions
from jobs.mem.ensemble.artifacts import write_index, write_manifest, write_subject
from memq.job import prediction_dir

# (job row, subject, split trials, voxel positions) -> values [n_trials, n_voxels]
Values = Callable[[dict[str, Any], str, np.ndarray, np.ndarray], np.ndarray]
SPLITS = ("predict", "val2")


def model_voxels(data_dir: Path, subject: str, job: dict[str, Any]) -> np.ndarray:
    with open_subject(subject_path(data_dir, subject)) as f:
        positions = roi_positions(f, job["params"].get("DATASET.ROIS"))
        return np.arange(f.n_voxels) if positions is None else positions


def write_fake(root: Path, data_dir: Path, job: dict[str, Any], values: Values, recipe: str = "uniform") -> None:
    for split in SPLITS:
        directory = prediction_dir(root, job["grid"], job["id"], recipe, split)
        entries, index = {}, {}
        for subject in list_subjects(data_dir):
            voxels = model_voxels(data_dir, subject, job)
            if not voxels.size:
                continue  # as MemDataModule leaves out a subject without voxels in the ROI
            with open_subject(subject_path(data_dir, subject)) as f:
                trials = f.split(split)
            entries[subject] = write_subject(directory, subject, values(job, subject, trials, voxels))
            index[subject] = (trials, voxels)
        write_manifest(directory, {"soup_sha256": "none", "index": write_index(directory, index),
                                   "subjects": entries})


def stitched(data_dir: Path, subject: str, split: str, jobs: list[dict[str, Any]], values: Values) -> np.ndarray:
    """One scheme's whole-brain prediction in float64, from the values as stored (float16)."""
    with open_subject(subject_path(data_dir, subject)) as f:
        trials, n = f.split(split), f.n_voxels
    out = np.full((len(trials), n), np.nan)
    for job in jobs:
        voxels = model_voxels(data_dir, subject, job)
        if voxels.size:
            out[:, voxels] = values(job, subject, trials, voxels).astype(np.float16).astype(np.float64)
    assert not np.isnan(out).any()
    return out


def r_per_voxel(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.array([np.corrcoef(pred[:, v], target[:, v])[0, 1] for v in range(pred.shape[1])])


def expected(data_dir: Path, schemes: dict[str, list[dict[str, Any]]], values: Values) -> dict[str, Any]:
    """The submission (hemi arrays per subject) and scores.json the ensemble must produce."""
    sub, alone, cumulative = {}, {}, []
    r_alone: dict[str, dict[str, np.ndarray]] = {name: {} for name in schemes}
    r_cum: list[dict[str, np.ndarray]] = [{} for _ in schemes]
    for subject in list_subjects(data_dir):
        with open_subject(subject_path(data_dir, subject)) as f:
            targets = f.betas[f.split("val2")].astype(np.float64)
            images = f.memory_index()[f.split("predict"), N_SLOTS - 1]
            order, layout = f.challenge_images(), f.challenge
        mean = np.mean([stitched(data_dir, subject, "predict", jobs, values) for jobs in schemes.values()], axis=0)
        rows = np.array([mean[images == image].mean(0) for image in order])[:, : layout.n_challenge]
        sub[subject] = {"lh": rows[:, : layout.n_lh], "rh": rows[:, layout.n_lh :]}
        total = 0
        for k, (name, jobs) in enumerate(schemes.items()):
            one = stitched(data_dir, subject, "val2", jobs, values)
            total = total + one
            r_alone[name][subject] = r_per_voxel(one, targets)
            r_cum[k][subject] = r_per_voxel(total / (k + 1), targets)

    def summary(by_subject: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"mean": float(np.concatenate(list(by_subject.values())).mean()),
                "per_subject": {s: float(r.mean()) for s, r in by_subject.items()}}

    names = list(schemes)
    alone = {name: summary(r_alone[name]) for name in names}
    cumulative = [{"schemes": names[: k + 1], **summary(r)} for k, r in enumerate(r_cum)]
    return {"submission": sub, "scores": {"per_scheme": alone, "cumulative": cumulative}}
