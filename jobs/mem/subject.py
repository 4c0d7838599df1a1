"""What a Mem model knows of one subject: all its voxel coordinates, the voxels it predicts, and
which of those belong to each of its ROIs. Built from the prepared data by the DataModule
(jobs/mem/data.py), read by the model and by training."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from jobs.mem.layers.coords import MEMQ_COORDS, CoordsMode, normalise_coords


@dataclass(frozen=True, eq=False)
class SubjectInfo:
    """The voxels of one subject that a model predicts.

    ``coords`` [N_s, 3] covers ALL the subject's voxels: its bounds fix the positional encoding, so
    ROI models and whole-brain models (and a frozen topyneck) see a voxel at the same position.
    ``voxels`` are the modelled voxels' positions in that list, in ROI order; None models them all.
    ``roi_columns``: ROI name -> the columns of that ROI's voxels among the modelled ones, for each
    of the model's ROIs that holds voxels (empty for a whole-brain model).
    """

    coords: np.ndarray
    voxels: np.ndarray | None = None
    roi_columns: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.coords.ndim != 2 or self.coords.shape[1] != 3 or len(self.coords) < 2:
            raise ValueError(f"coords must be [N_s >= 2, 3], got {self.coords.shape}")
        if self.voxels is not None:
            in_range = self.voxels.size == 0 or 0 <= self.voxels.min() <= self.voxels.max() < len(self.coords)
            if self.voxels.ndim != 1 or not in_range:
                raise ValueError(f"voxels must be 1-D positions in 0..{len(self.coords) - 1}")

    @property
    def n_voxels(self) -> int:
        return len(self.coords) if self.voxels is None else len(self.voxels)

    def positions(self, mode: CoordsMode = MEMQ_COORDS) -> Tensor:
        """Normalised coordinates [n_voxels, 3] of the modelled voxels, bounds from all voxels
        (raw coordinates with ``mode.subset_bounds``: the coordinate MLPs then normalise them)."""
        full = torch.as_tensor(self.coords, dtype=torch.float32)
        modelled = full if self.voxels is None else full[torch.as_tensor(self.voxels, dtype=torch.long)]
        return modelled if mode.subset_bounds else normalise_coords(modelled, full)
