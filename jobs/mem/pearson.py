"""Per-voxel Pearson r over a whole evaluation epoch, from exact streaming sums (mem-spec 3.3)."""

from __future__ import annotations

import torch
from torch import Tensor


class PearsonSums:
    """Running sums of x, y, x^2, y^2 and xy per voxel, in float64.

    r is exact for any number of batches; a voxel whose prediction or target is constant over
    the epoch (or that saw fewer than two samples) gets r = 0, as the reference turns NaN into 0.
    """

    def __init__(self, n_voxels: int) -> None:
        self.n_voxels = n_voxels
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.sums: Tensor | None = None  # [5, n_voxels]: x, y, xx, yy, xy

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch of predictions and targets, both [B, n_voxels]."""
        x, y = preds.detach().double(), target.detach().double()
        batch = torch.stack([x.sum(0), y.sum(0), (x * x).sum(0), (y * y).sum(0), (x * y).sum(0)])
        self.sums = batch if self.sums is None else self.sums + batch
        self.count += x.shape[0]

    def compute(self) -> Tensor:
        """r per voxel [n_voxels] (float32, on the device of the updates; zeros before any update)."""
        if self.sums is None:
            return torch.zeros(self.n_voxels)
        sx, sy, sxx, syy, sxy = self.sums
        n = self.count
        cov, var_x, var_y = sxy - sx * sy / n, sxx - sx * sx / n, syy - sy * sy / n
        r = cov / torch.sqrt(var_x * var_y)
        return torch.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0).clamp(-1, 1).float()
