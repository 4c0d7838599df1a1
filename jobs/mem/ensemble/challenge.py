"""The Algonauts 2023 submission of one subject from its predict-split prediction (mem-spec 4.4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jobs.data.layout import ChallengeLayout
from jobs.data.truth import HEMIS
from jobs.eval.submission import prediction_file
from jobs.mem.ensemble.artifacts import save_npy
from memq.job import write_atomically


def submission(
    pred: np.ndarray, trial_images: np.ndarray, challenge_images: np.ndarray, layout: ChallengeLayout
) -> dict[str, np.ndarray]:
    """hemi -> float32 [n_test, n_hemi]: row i averages the trials that showed challenge image i
    (``pred`` rows are trials, ``trial_images`` their images); columns are the first n_challenge
    voxels, lh then rh."""
    rows = np.empty((len(challenge_images), layout.n_challenge), dtype=np.float32)
    for i, image in enumerate(challenge_images):
        shown = np.flatnonzero(trial_images == image)
        if not shown.size:
            raise ValueError(f"challenge image {image} was shown in no predict trial")
        rows[i] = pred[shown, : layout.n_challenge].mean(axis=0)
    return {"lh": rows[:, : layout.n_lh], "rh": rows[:, layout.n_lh :]}


def write_submission(out: Path, subject: str, hemis: dict[str, np.ndarray]) -> None:
    """``out/subjXX/{lh,rh}_pred_test.npy``, each published atomically."""
    for hemi in HEMIS:
        write_atomically(prediction_file(out, subject, hemi), lambda tmp, h=hemi: save_npy(tmp, hemis[h]))
