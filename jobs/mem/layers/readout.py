"""Voxel-wise readout: y_n = mean_d(h_n,d * W_n,d) + b_n over the d_model-wide voxel feature (mem-spec 2.7)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from jobs.mem.layers.coords import MEMQ_COORDS, CachedCoordsMLP, CoordsMode


class FreeVoxelWeights(nn.Module):
    """A free weight row and bias per voxel, initialised like ``nn.Linear(d_model, n_voxels)``."""

    def __init__(self, n_voxels: int, d_model: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(d_model)
        self.weight = nn.Parameter(torch.empty(n_voxels, d_model))
        self.bias = nn.Parameter(torch.empty(n_voxels).uniform_(-bound, bound))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, voxels: Tensor) -> tuple[Tensor, Tensor]:
        return self.weight[voxels], self.bias[voxels]


class SharedVoxelWeights(nn.Module):
    """Weight rows from a coordinate MLP (no final activation), and a zero-initialised bias per voxel."""

    def __init__(
        self, positions: Tensor, d_model: int, width: int, depth: int, mode: CoordsMode = MEMQ_COORDS
    ) -> None:
        super().__init__()
        self.weight = CachedCoordsMLP(positions, d_model, width, depth, nn.Identity(), mode)
        self.bias = nn.Parameter(torch.zeros(len(positions)))

    def forward(self, voxels: Tensor) -> tuple[Tensor, Tensor]:
        return self.weight(voxels), self.bias[voxels]


def apply_readout(local: Tensor, shared: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Predictions [B, n] for the voxel feature h = concat(local [B, n, Dl], shared [B, Ds]).

    Equal to ``(h * weight).mean(-1) + bias`` but never materialises h: the shared part is the
    same for every voxel, so it is one matrix product.
    """
    d_local = local.shape[-1]
    y = torch.einsum("bnd,nd->bn", local, weight[:, :d_local]) + shared @ weight[:, d_local:].T
    return y / weight.shape[1] + bias
