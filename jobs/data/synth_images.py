"""Synthetic images with low-frequency content, their memory features and their pooled pixels.

Images are a random 8x8 RGB field upsampled bilinearly plus a little pixel noise, so most of
their variance is coarse and a 4x4 average pool (what the planted signal reads) carries it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

FIELD_SIZE = 8
SIGNAL_POOL = 4
FEATURE_POOL = 8
PIXEL_NOISE = 0.05


def render_images(rng: np.random.Generator, n: int, image_size: int) -> np.ndarray:
    """uint8 [n, 3, image_size, image_size]."""
    field = torch.from_numpy(rng.random((n, 3, FIELD_SIZE, FIELD_SIZE), dtype=np.float32))
    smooth = F.interpolate(field, size=(image_size, image_size), mode="bilinear", align_corners=False).numpy()
    noisy = smooth + PIXEL_NOISE * rng.standard_normal(smooth.shape, dtype=np.float32)
    return np.round(np.clip(noisy, 0.0, 1.0) * 255).astype(np.uint8)


def pooled(images: np.ndarray, size: int) -> np.ndarray:
    """float32 [n, 3 * size * size]: pixel values in [0, 1] average-pooled to size x size."""
    x = torch.from_numpy(images).float().div_(255)
    return F.adaptive_avg_pool2d(x, size).flatten(1).numpy()


def feature_projection(rng: np.random.Generator, feature_dim: int) -> np.ndarray:
    """The fixed linear map from centred 8x8-pooled pixels to memory features."""
    n_in = 3 * FEATURE_POOL * FEATURE_POOL
    return rng.standard_normal((n_in, feature_dim)).astype(np.float32) * np.float32(2 / np.sqrt(n_in))


def image_features(images: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """float16 [n, F]: the deterministic stand-in for the DINOv2 memory features."""
    return ((pooled(images, FEATURE_POOL) - 0.5) @ projection).astype(np.float16)
