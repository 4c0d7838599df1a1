"""Coordinate MLPs: per-voxel outputs computed from voxel positions (mem-spec 2.3).

Positions are normalised with bounds fixed per subject, taken from the subject's full coordinate
array, so a voxel's encoding does not depend on which other voxels are evaluated with it (the
reference used the bounds of whatever subset it was given; mem-spec 5.5).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

# The reference hard-codes these (its POSITION_ENCODING.* settings are ignored).
PE_STEPS = 100.0  # the widest axis spans [0, PE_STEPS]
PE_FEATURES = 32  # frequencies per axis
PE_PERIODS = 100.0  # frequencies are PE_PERIODS ** e, e evenly spaced from 0 to 1/F - 1


def normalise_coords(coords: Tensor, reference: Tensor) -> Tensor:
    """``coords`` shifted by the minimum of ``reference`` and scaled so its widest axis spans 0..100."""
    low = reference.min(dim=0).values
    extent = (reference.max(dim=0).values - low).max()
    return (coords - low) * (PE_STEPS / extent)


def fourier_features(positions: Tensor) -> Tensor:
    """Sinusoidal encoding [n, 3] -> [n, 3 * 32 * 2], ordered axis, frequency, (sin, cos)."""
    exponents = torch.linspace(0, 1 / PE_FEATURES - 1, PE_FEATURES, device=positions.device)
    omega = (PE_PERIODS**exponents).to(positions.dtype)
    angles = positions.unsqueeze(-1) * omega  # [n, 3, F]
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)


class CachedCoordsMLP(nn.Module):
    """MLP over the fourier features of a fixed set of voxel positions, with an output cache.

    When the MLP does not train (frozen, or eval mode) its output for every voxel is computed once
    and indexed: a 25,600-voxel MLP per step would otherwise cost as much as the backbone. The
    cache is dropped whenever it could be stale: on load_state_dict, on train()/eval(), and when
    the module moves to another device or dtype.
    """

    def __init__(self, positions: Tensor, out_dim: int, width: int, depth: int, final: nn.Module) -> None:
        super().__init__()
        self.register_buffer("positions", positions, persistent=False)  # derivable: not in checkpoints
        dims = [3 * PE_FEATURES * 2] + [width] * (depth - 1)
        layers: list[nn.Module] = []
        for d_in, d_out in itertools.pairwise(dims):
            layers += [nn.Linear(d_in, d_out), nn.GELU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, out_dim), final)
        self._cache: Tensor | None = None
        self.register_load_state_dict_post_hook(_clear_cache_after_load)

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.net.parameters())

    def clear_cache(self) -> None:
        self._cache = None

    def train(self, mode: bool = True) -> CachedCoordsMLP:
        self.clear_cache()
        return super().train(mode)

    def forward(self, voxels: Tensor) -> Tensor:
        """Outputs [n, out_dim] for ``voxels``, positions into this module's voxel list."""
        if self.training and self.trainable:
            return self.net(fourier_features(self.positions[voxels]))
        cache = self._cache
        if cache is None or cache.device != self.positions.device or cache.dtype != self.positions.dtype:
            with torch.no_grad(), torch.autocast(self.positions.device.type, enabled=False):
                cache = self._cache = self.net(fourier_features(self.positions))
        return cache[voxels]


def _clear_cache_after_load(module: CachedCoordsMLP, _incompatible_keys: object) -> None:
    # a module-level function, not a lambda, so that the model stays picklable
    module.clear_cache()
