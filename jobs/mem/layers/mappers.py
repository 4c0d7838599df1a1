"""Per-subject voxel maps (the "topyneck"): where each voxel looks, and at which layers (mem-spec 2.3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from jobs.mem.layers.coords import MEMQ_COORDS, CachedCoordsMLP, CoordsMode


class RetinaMapper(CachedCoordsMLP):
    """Voxel -> receptive-field centre mu in (-1, 1)^2, the grid_sample coordinates of its feature."""

    def __init__(
        self, positions: Tensor, width: int, depth: int, sigma: float, mode: CoordsMode = MEMQ_COORDS
    ) -> None:
        super().__init__(positions, 2, width, depth, nn.Tanh(), mode)
        self.sigma = sigma

    def forward(self, voxels: Tensor) -> Tensor:
        # shrunk by 1 - sigma (0.99) so that the training jitter rarely leaves the image
        mu = (1 - self.sigma) * super().forward(voxels)
        if self.training:
            # one draw per voxel, shared by every sample of the batch; applied even when frozen
            mu = mu + self.sigma * torch.randn_like(mu)
        return mu


class LayerSelector(CachedCoordsMLP):
    """Voxel -> softmax weights over the tapped backbone layers."""

    def __init__(
        self, positions: Tensor, n_layers: int, width: int, depth: int, mode: CoordsMode = MEMQ_COORDS
    ) -> None:
        super().__init__(positions, n_layers, width, depth, nn.Softmax(dim=-1), mode)


def negative_entropy(layer_weights: Tensor) -> Tensor:
    """The LayerSelector regulariser: mean over voxels of sum_l w_l log w_l, for weights [n, L].

    As in the reference, adding this to the loss pushes the weights towards uniform (switch
    LAYER_ENTROPY "sharp" subtracts it instead).
    """
    return torch.special.xlogy(layer_weights, layer_weights).sum(dim=-1).mean()
