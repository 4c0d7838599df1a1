"""The planted ground truth: a known voxel-wise linear map of per-trial latent factors.

Every voxel's signal is a linear readout of a few latent factors of the trial (the image factors
first, one behaviour factor last). Readout weights and signal amplitudes vary smoothly over the
voxel coordinates. The signal is normalised with the factors' exact moments over the subject's
trials, so its variance over those trials is exactly ``signal_std ** 2`` per voxel and the best
achievable Pearson r against ``signal + N(0, noise^2)`` is known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_CENTRES = 12
LENGTH_SCALE = 60.0  # in coordinate units (sphere radius 100)


@dataclass
class PlantedMap:
    mix: np.ndarray  # [n_factors, n_voxels]
    mean: np.ndarray  # [n_voxels], mean of latent @ mix over the subject's trials
    std: np.ndarray  # [n_voxels], its standard deviation
    signal_std: np.ndarray  # [n_voxels]

    def signal(self, latent: np.ndarray) -> np.ndarray:
        """float32 [n, n_voxels] signal of trials with factors ``latent`` [n, n_factors]."""
        return (self.signal_std * (latent @ self.mix - self.mean) / self.std).astype(np.float32)

    def r_ceiling(self, noise: float) -> np.ndarray:
        """Population Pearson r between the signal and signal + noise, per voxel."""
        return self.signal_std / np.sqrt(self.signal_std**2 + noise**2)


def smooth_fields(rng: np.random.Generator, coords: np.ndarray, n_fields: int) -> np.ndarray:
    """[n_voxels, n_fields] random fields: Gaussian bumps at random voxels, randomly weighted."""
    centres = coords[rng.choice(len(coords), min(N_CENTRES, len(coords)), replace=False)]
    bumps = np.exp(-((coords[:, None] - centres[None]) ** 2).sum(-1) / (2 * LENGTH_SCALE**2))
    return bumps @ rng.standard_normal((len(centres), n_fields))


def plant(
    rng: np.random.Generator,
    coords: np.ndarray,
    latent: np.ndarray,
    signal_std: tuple[float, float],
    behavior_share: float,
) -> PlantedMap:
    """Draw the voxel-wise map for trials with factors ``latent`` (last column: behaviour).

    The behaviour factor explains about ``behavior_share`` of the signal variance where its
    smooth weight field peaks (less elsewhere); amplitudes span ``signal_std`` smoothly.
    """
    n_image = latent.shape[1] - 1
    fields = smooth_fields(rng, coords.astype(np.float64), n_image + 2)
    image_mix = fields[:, :n_image].T
    cov = np.cov(latent, rowvar=False, bias=True)
    image_var = ((cov[:n_image, :n_image] @ image_mix) * image_mix).sum(0)
    behavior_weight = fields[:, n_image] / np.abs(fields[:, n_image]).max()
    behavior_mix = behavior_weight * np.sqrt(behavior_share / (1 - behavior_share) * image_var / cov[-1, -1])
    mix = np.vstack([image_mix, behavior_mix])
    amplitude = fields[:, -1]
    amplitude = (amplitude - amplitude.min()) / (np.ptp(amplitude) + 1e-12)
    lo, hi = signal_std
    return PlantedMap(
        mix=mix,
        mean=latent.mean(0) @ mix,
        std=np.sqrt(((cov @ mix) * mix).sum(0)),
        signal_std=lo + (hi - lo) * amplitude,
    )
