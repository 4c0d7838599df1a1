"""One session's betas as stored: NaN policy and z-scoring per voxel over the session's trials."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memq.job import UserError

EPS = 1e-8


def check_nan(block: np.ndarray, path: Path) -> None:
    """Raise if a voxel of ``block`` [trials, voxels] has no finite value at all.

    Scattered NaNs become 0 (mem-spec 1.6); a voxel that is NaN in every trial has no data, which
    means the voxel selection and the betas disagree.
    """
    if block.dtype.kind == "f":
        dead = np.isnan(block).all(axis=0)
        if dead.any():
            raise UserError(
                f"{int(dead.sum())} selected voxels are NaN in every trial of this session",
                where=str(path),
                hint="the voxel mask must exclude voxels without data (NaN in single trials is set to 0)",
            )


def zscore_session(block: np.ndarray) -> np.ndarray:
    """float16 [trials, voxels]: NaN -> 0, then z-scored per voxel (in place on float32 input)."""
    x = np.nan_to_num(block.astype(np.float32, copy=False), copy=False)
    x -= x.mean(axis=0)
    x /= x.std(axis=0) + EPS
    return x.astype(np.float16)
