"""fsaverage surface data: ``.mgh`` files, noise-ceiling voxel selection and sphere coordinates.

Vertices of both hemispheres are numbered lh first: vertex ``v`` of rh is ``n_lh + v``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs.data.inputs import reason, require_file
from memq.job import UserError

NC_TOLERANCE = 0.001
NC_TRIALS = 3  # NSD's noise ceiling is for the mean of 3 trials
SPHERE_GAP = 1.5  # rh starts at lh_xmin + 1.5 * (lh x-range)
_BISECTION_STEPS = 200
_SCALE_STEPS = 10_000  # the reference's x0.5/x1.5 search has no limit; it can oscillate forever


def read_mgh(path: Path, what: str, n_vertices: int, n_frames: int) -> np.ndarray:
    """[n_vertices, n_frames] values of an ``.mgh`` file of shape [n_vertices, 1, 1, n_frames]
    ([n_vertices, 1, 1] for one frame), in the file's dtype (NSD betas: int16, 300 x percent signal
    change), memory-mapped where nibabel can."""
    import nibabel

    require_file(path, what)
    try:
        image = nibabel.load(path)
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise UserError(f"not a readable .mgh file ({reason(exc)})", where=str(path), hint=f"expected {what}") from exc
    shape = tuple(int(d) for d in image.shape)
    if shape[:3] != (n_vertices, 1, 1) or shape[3:] not in ((n_frames,), () if n_frames == 1 else None):
        raise UserError(f"{what} is {list(shape)}, expected [{n_vertices}, 1, 1, {n_frames}]", where=str(path))
    return np.asanyarray(image.dataobj).reshape(n_vertices, n_frames)


def noise_ceiling(ncsnr: np.ndarray) -> np.ndarray:
    """NC = ncsnr^2 / (ncsnr^2 + 1/3), as a fraction (NaN stays NaN)."""
    snr2 = np.square(ncsnr.astype(np.float64))
    return snr2 / (snr2 + 1 / NC_TRIALS)


def nc_threshold(candidates: np.ndarray, target: float, tol: float = NC_TOLERANCE) -> float:
    """The threshold th at which the vertices of ``candidates`` with NC > th have mean NC ``target``.

    That mean never decreases as th rises, so th is found by bisection between the lowest and
    the highest candidate NC (the reference multiplied th by 0.5 or 1.5 and could oscillate
    forever). Ends when the mean is within ``tol`` of ``target``; where no threshold gets that
    close (few candidates, or a target outside their range) it returns the one whose mean came
    closest (all candidates when even their overall mean lies above the target).
    """
    nc = np.sort(candidates[np.isfinite(candidates)])[::-1]
    if nc.size == 0:
        return np.inf
    top_mean = np.cumsum(nc) / np.arange(1, nc.size + 1)  # mean of the k + 1 highest

    def mean_above(th: float) -> float:
        k = int(np.searchsorted(-nc, -th, side="left"))  # count of nc > th
        return top_mean[k - 1] if k else np.inf

    lo, hi = float(np.nextafter(nc[-1], -np.inf)), float(nc[0])
    if mean_above(lo) >= target - tol:
        return lo
    best, best_gap = lo, target - mean_above(lo)
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        gap = mean_above(mid) - target
        if abs(gap) < best_gap:
            best, best_gap = mid, abs(gap)
        if abs(gap) <= tol or not lo < mid < hi:
            break
        if gap > 0:
            hi = mid
        else:
            lo = mid
    return best


def nc_threshold_scaled(candidates: np.ndarray, target: float, tol: float = NC_TOLERANCE) -> float:
    """The reference's threshold search (switch NC_SEARCH scale): start at ``target``, then
    multiply by 0.5 while the mean NC of the candidates above the threshold is above ``target``,
    else by 1.5, until the two agree within ``tol`` (``np.isclose``). The first step always
    halves. Raises UserError where the reference would loop forever."""
    th, mean = target, 1.0
    for _ in range(_SCALE_STEPS):
        if np.isclose(mean, target, atol=tol):
            return th
        th *= 0.5 if mean > target else 1.5
        above = candidates[candidates > th]  # NaN compares False, as in the reference
        mean = float(above.mean()) if above.size else float("nan")
    raise UserError(
        f"the reference's x0.5/x1.5 noise-ceiling search did not converge in {_SCALE_STEPS} steps",
        hint="use nc_search: bisect (--nc-search bisect)",
    )


@dataclass(frozen=True)
class VertexSelection:
    """The subject's voxels: challenge vertices (ascending), then the added high-NC vertices (ascending)."""

    voxel_indices: np.ndarray
    n_challenge: int
    n_lh: int  # challenge vertices in lh
    threshold: float
    challenge_nc: float  # mean NC of the challenge vertices
    added_nc: float  # mean NC of the added vertices (NaN if none)


def select_vertices(
    challenge: np.ndarray, nc: np.ndarray, n_lh_vertices: int, search: str = "bisect"
) -> VertexSelection:
    """Challenge vertices plus every other vertex whose NC exceeds the automatic threshold (mem-spec 1.6),
    found by bisection or, with ``search`` "scale", by the reference's search (switch NC_SEARCH)."""
    target = float(np.nanmean(nc[challenge]))
    outside = np.where(challenge, np.nan, nc)
    threshold = (nc_threshold_scaled if search == "scale" else nc_threshold)(outside, target)
    added = np.flatnonzero(np.isfinite(outside) & (outside > threshold))
    chosen = np.flatnonzero(challenge)
    return VertexSelection(
        voxel_indices=np.concatenate([chosen, added]).astype(np.int64),
        n_challenge=chosen.size,
        n_lh=int((chosen < n_lh_vertices).sum()),
        threshold=threshold,
        challenge_nc=target,
        added_nc=float(nc[added].mean()) if added.size else float("nan"),
    )


def read_sphere(path: Path, n_vertices: int) -> np.ndarray:
    """Vertex coordinates [n_vertices, 3] of a FreeSurfer surface file (``?h.sphere``)."""
    from nibabel.freesurfer import read_geometry

    hint = "NSD's nsddata/freesurfer/fsaverage/surf/?h.sphere, or --fsaverage-dir"
    require_file(path, "FreeSurfer fsaverage sphere", hint=hint)
    try:
        coords = read_geometry(str(path))[0]
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise UserError(f"not a readable FreeSurfer surface ({reason(exc)})", where=str(path)) from exc
    if coords.shape != (n_vertices, 3):
        raise UserError(f"sphere has {coords.shape[0]} vertices, expected {n_vertices}", where=str(path))
    return coords


def side_by_side(lh: np.ndarray, rh: np.ndarray) -> np.ndarray:
    """float32 [n_lh + n_rh, 3]: both spheres, rh moved along x to start at lh_xmin + 1.5 lh x-range."""
    lh_min, lh_max = lh[:, 0].min(), lh[:, 0].max()
    shifted = rh.copy()
    shifted[:, 0] += lh_min + SPHERE_GAP * (lh_max - lh_min) - rh[:, 0].min()
    return np.concatenate([lh, shifted]).astype(np.float32)
