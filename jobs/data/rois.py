"""Random ROIs r_j_i (atlases R1..R10), reproducing the reference procedure of mem-spec 1.8."""

from __future__ import annotations

import numpy as np

RANDOM_ROI_SEED = 45510


def random_rois(
    n_voxels: int, n_atlases: int = 10, n_rois: int = 9, seed: int = RANDOM_ROI_SEED
) -> dict[str, np.ndarray]:
    """``{"r_j_i": voxel positions}`` for atlas j = 1..n_atlases and ROI i = 1..n_rois.

    Index for index equal to the reference: NumPy's legacy global RNG is seeded once, then one
    ``arange(n_voxels)`` buffer is shuffled in place per atlas (each shuffle permutes the previous
    result) and ``array_split`` into ``n_rois`` chunks, kept in shuffled order. The caller's global
    RNG state is restored.
    """
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        buffer = np.arange(n_voxels)
        rois: dict[str, np.ndarray] = {}
        for j in range(1, n_atlases + 1):
            np.random.shuffle(buffer)
            for i, chunk in enumerate(np.array_split(buffer, n_rois), start=1):
                rois[f"r_{j}_{i}"] = chunk.astype(np.int64)  # a copy: the buffer is shuffled again
        return rois
    finally:
        np.random.set_state(state)
