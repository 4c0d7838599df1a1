"""Stitching ROI models into whole-brain predictions, streamed into one float32 array.

Each model's file is read once, block by block, and added into the columns of its voxels: memory
stays about one whole-brain prediction whatever the number of models.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from jobs.mem.artifacts import SubjectPrediction, stream_rows


def coverage(voxel_sets: Iterable[np.ndarray], n_voxels: int) -> str | None:
    """None if the sets cover each of ``n_voxels`` voxels exactly once; else what is wrong."""
    counts = np.zeros(n_voxels, dtype=np.int64)
    for voxels in voxel_sets:
        if voxels.size and (voxels.min() < 0 or voxels.max() >= n_voxels):
            return f"voxel positions outside 0..{n_voxels - 1}"
        np.add.at(counts, voxels, 1)
    missing, doubled = int((counts == 0).sum()), int((counts > 1).sum())
    if missing or doubled:
        return f"{missing} of {n_voxels} voxels predicted by no model, {doubled} by more than one"
    return None


def _columns(voxels: np.ndarray) -> slice | np.ndarray:
    """A slice where the voxels are one ascending run (whole-brain models): much faster to add into."""
    if voxels.size and np.array_equal(voxels, np.arange(voxels[0], voxels[0] + voxels.size)):
        return slice(int(voxels[0]), int(voxels[0]) + voxels.size)
    return voxels


def add_model(out: np.ndarray, part: SubjectPrediction, scale: float = 1.0) -> None:
    """``out[:, part.voxels] += scale * predictions``, read block by block (sha256 checked)."""
    columns = _columns(part.voxels)
    for start, block in stream_rows(part):
        values = block.astype(np.float32)
        if scale != 1.0:
            values *= np.float32(scale)
        out[start : start + len(values), columns] += values
