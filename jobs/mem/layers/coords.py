"""Coordinate MLPs: per-voxel outputs computed from voxel positions (mem-spec 2.3).

Positions are normalised with bounds fixed per subject, taken from the subject's full coordinate
array, so a voxel's encoding does not depend on which other voxels are evaluated with it (the
reference used the bounds of whatever subset it was given; mem-spec 5.5). :class:`CoordsMode`
selects the reference's behaviour instead (switches PE_BOUNDS and COORD_CACHE, jobs/compat.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from jobs.mem.config import MemConfig

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


@dataclass(frozen=True)
class CoordsMode:
    """How coordinate MLPs normalise and cache (memq's defaults: the fixes of mem-spec 5.5, 5.6).

    ``subset_bounds``: the positions given are raw coordinates, normalised by the bounds of the
    voxels of each call (all modelled voxels when cached, the training sample otherwise).
    ``stale_cache``: the cache survives weight loads and train/eval switches; only a training
    forward of a trainable MLP drops it.
    """

    subset_bounds: bool = False
    stale_cache: bool = False

    @classmethod
    def of(cls, config: MemConfig) -> CoordsMode:
        return cls(config.switch("PE_BOUNDS") == "subset", config.switch("COORD_CACHE") == "stale")


MEMQ_COORDS = CoordsMode()


class CachedCoordsMLP(nn.Module):
    """MLP over the fourier features of a fixed set of voxel positions, with an output cache.

    When the MLP does not train (frozen, or eval mode) its output for every voxel is computed once
    and indexed: a 25,600-voxel MLP per step would otherwise cost as much as the backbone. The
    cache is dropped whenever it could be stale: on load_state_dict, on train()/eval(), and when
    the module moves to another device or dtype (with ``mode.stale_cache``, only on the device or
    dtype change and in a training forward).
    """

    def __init__(
        self,
        positions: Tensor,
        out_dim: int,
        width: int,
        depth: int,
        final: nn.Module,
        mode: CoordsMode = MEMQ_COORDS,
    ) -> None:
        super().__init__()
        self.coords_mode = mode
        self.register_buffer("positions", positions, persistent=False)  # derivable: not in checkpoints
        dims = [3 * PE_FEATURES * 2] + [width] * (depth - 1)
        layers: list[nn.Module] = []
        for d_in, d_out in itertools.pairwise(dims):
            layers += [nn.Linear(d_in, d_out), nn.GELU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, out_dim), final)
        self._cache: Tensor | None = None
        if not mode.stale_cache:
            self.register_load_state_dict_post_hook(_clear_cache_after_load)

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.net.parameters())

    def clear_cache(self) -> None:
        self._cache = None

    def train(self, mode: bool = True) -> CachedCoordsMLP:
        if not self.coords_mode.stale_cache:
            self.clear_cache()
        return super().train(mode)

    def _encode(self, positions: Tensor) -> Tensor:
        if self.coords_mode.subset_bounds:
            positions = normalise_coords(positions, positions)
        return fourier_features(positions)

    def forward(self, voxels: Tensor) -> Tensor:
        """Outputs [n, out_dim] for ``voxels``, positions into this module's voxel list."""
        if self.training and self.trainable:
            if self.coords_mode.stale_cache:
                self.clear_cache()  # the reference's only invalidation
            return self.net(self._encode(self.positions[voxels]))
        cache = self._cache
        if cache is None or cache.device != self.positions.device or cache.dtype != self.positions.dtype:
            with torch.no_grad(), torch.autocast(self.positions.device.type, enabled=False):
                cache = self._cache = self.net(self._encode(self.positions))
        return cache[voxels]


def _clear_cache_after_load(module: CachedCoordsMLP, _incompatible_keys: object) -> None:
    # a module-level function, not a lambda, so that the model stays picklable
    module.clear_cache()
