"""Reading an Algonauts 2023 submission: ``DIR/subjXX/{lh,rh}_pred_test.npy`` (mem-spec 4.4).

Each file is float [n_test, n_vertices] of one hemisphere: rows are the subject's test images in
``challenge_set`` order, columns its challenge vertices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jobs.data.inputs import load_npy
from jobs.data.truth import HEMIS
from jobs.eval.subjects import subject_dirs
from memq.job import UserError

HINT = "a submission holds subjXX/lh_pred_test.npy and subjXX/rh_pred_test.npy (mem-spec 4.4)"


def prediction_file(pred_dir: Path, subject: str, hemi: str) -> Path:
    return pred_dir / subject / f"{hemi}_pred_test.npy"


def submission_subjects(pred_dir: Path) -> list[str]:
    return subject_dirs(pred_dir, "submission", HINT)


def read_prediction(pred_dir: Path, subject: str) -> dict[str, np.ndarray]:
    """hemi -> float64 [n_test, n_vertices]; raises unless both files hold finite 2-d arrays."""
    out = {}
    for hemi in HEMIS:
        path = prediction_file(pred_dir, subject, hemi)
        values = load_npy(path, f"prediction [n_test, n_{hemi}]")
        if values.ndim != 2 or values.dtype.kind not in "iuf":
            raise UserError(
                f"prediction must be a 2-d numeric array, got {values.dtype} {list(values.shape)}",
                where=str(path),
                hint=HINT,
            )
        if not np.all(np.isfinite(values)):
            raise UserError("prediction holds NaN or infinite values", where=str(path))
        out[hemi] = values.astype(np.float64)
    return out
