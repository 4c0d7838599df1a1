"""The Algonauts 2023 noise-normalised score (mem-spec 4.5) of a submission against a test truth.

Per vertex: ``min(max(r, 0)^2 / NC, 1) * 100`` with r the Pearson r over test images and NC the
noise ceiling of ``jobs/data/TRUTH.md``. Aggregates are the median (what the Algonauts evaluation
code reports) and the mean over vertices: per hemisphere, per subject, per stream ROI (where the
truth has labels) and over every vertex of every subject pooled. How the official leaderboard
pooled subjects is not known (mem-spec, open points).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jobs.data.truth import HEMIS, HINT, STREAM_NAMES, SubjectTruth, read_truth
from jobs.eval.subjects import subject_dirs
from jobs.eval.submission import prediction_file, read_prediction, submission_subjects
from memq.job import UserError

NC_FLOOR = 1e-14  # replaces NC = 0, as the Algonauts devkit does


def noise_ceiling(ncsnr: np.ndarray, repeats: np.ndarray) -> np.ndarray:
    """NC per vertex, as a fraction. ``(A/3 + B/2 + C/1) / (A + B + C)`` with A, B, C the images
    shown 3, 2 and 1 times is the mean of 1/repeats over the test images."""
    snr2 = np.square(np.asarray(ncsnr, dtype=np.float64))
    nc = snr2 / (snr2 + np.mean(1.0 / np.asarray(repeats, dtype=np.float64)))
    return np.where(nc == 0, NC_FLOOR, nc)


def pearson(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pearson r of each column over the rows; 0 where either column is constant."""
    p = pred - pred.mean(0)
    t = target - target.mean(0)
    denom = np.sqrt((p * p).sum(0) * (t * t).sum(0))
    r = (p * t).sum(0) / np.where(denom > 0, denom, 1.0)
    return np.where(denom > 0, r, 0.0)


def vertex_scores(pred: np.ndarray, target: np.ndarray, ncsnr: np.ndarray, repeats: np.ndarray) -> np.ndarray:
    """Score per vertex (0..100) of ``pred`` against ``target``, both [n_test, n_vertices]."""
    r = np.maximum(pearson(pred, target), 0.0)
    return np.minimum(r**2 / noise_ceiling(ncsnr, repeats), 1.0) * 100


@dataclass(frozen=True)
class SubjectScores:
    subject: str
    hemis: dict[str, np.ndarray]  # hemi -> score per vertex
    streams: np.ndarray | None  # stream label per vertex, lh then rh

    @property
    def vertices(self) -> np.ndarray:
        """Score per challenge vertex, lh then rh."""
        return np.concatenate([self.hemis[hemi] for hemi in HEMIS])

    def rois(self) -> dict[str, np.ndarray]:
        """Stream ROI name -> scores of its vertices (empty without labels)."""
        if self.streams is None:
            return {}
        return {name: self.vertices[self.streams == k] for k, name in enumerate(STREAM_NAMES)}


def score_subject(
    subject: str, prediction: dict[str, np.ndarray], truth: SubjectTruth, pred_dir: Path
) -> SubjectScores:
    hemis = {}
    for hemi in HEMIS:
        pred, part = prediction[hemi], truth.hemis[hemi]
        if pred.shape != part.fmri.shape:
            raise UserError(
                f"prediction is {list(pred.shape)} but the truth's {hemi}_test_fmri.npy is {list(part.fmri.shape)}",
                where=str(prediction_file(pred_dir, subject, hemi)),
                hint="[n_test images, n challenge vertices] in the truth's image and vertex order",
            )
        hemis[hemi] = vertex_scores(pred, part.fmri, part.ncsnr, truth.repeats)
    labelled = all(truth.hemis[hemi].streams is not None for hemi in HEMIS)
    streams = np.concatenate([truth.hemis[hemi].streams for hemi in HEMIS]) if labelled else None
    return SubjectScores(subject, hemis, streams)


def score_dirs(pred_dir: Path, truth_dir: Path) -> list[SubjectScores]:
    """Score every subject of a submission; both sides must hold the same subjects."""
    predicted = submission_subjects(pred_dir)
    known = subject_dirs(truth_dir, "truth", HINT)
    if missing := sorted(set(predicted) - set(known)):
        raise UserError(f"no truth for {', '.join(missing)}", where=str(truth_dir), hint=HINT)
    if missing := sorted(set(known) - set(predicted)):
        raise UserError(
            f"no prediction for {', '.join(missing)}",
            where=str(pred_dir),
            hint="a submission must cover every subject of the truth",
        )
    return [score_subject(s, read_prediction(pred_dir, s), read_truth(truth_dir, s), pred_dir) for s in predicted]


def summary(values: np.ndarray) -> dict[str, Any]:
    """Vertex count, median and mean (None for no vertices)."""
    if values.size == 0:
        return {"n": 0, "median": None, "mean": None}
    return {"n": int(values.size), "median": float(np.median(values)), "mean": float(values.mean())}


def pooled_rois(scores: list[SubjectScores]) -> dict[str, np.ndarray]:
    """Stream ROI name -> scores of its vertices in every subject with labels."""
    per_subject = [s.rois() for s in scores if s.streams is not None]
    return {name: np.concatenate([rois[name] for rois in per_subject]) for name in STREAM_NAMES} if per_subject else {}


def scores_json(scores: list[SubjectScores]) -> dict[str, Any]:
    """Summaries per subject (all, lh, rh, ROIs), per ROI over subjects, and over all vertices."""
    subjects = {
        s.subject: {
            "all": summary(s.vertices),
            **{hemi: summary(s.hemis[hemi]) for hemi in HEMIS},
            "rois": {name: summary(values) for name, values in s.rois().items()},
        }
        for s in scores
    }
    return {
        "metric": "Algonauts 2023 noise-normalised score per vertex, percent (mem-spec 4.5)",
        "all": summary(np.concatenate([s.vertices for s in scores])),
        "subjects": subjects,
        "rois": {name: summary(values) for name, values in pooled_rois(scores).items()},
    }
