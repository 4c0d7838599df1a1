"""The voxel spaces of `memq data prepare-nsd --space`: which voxels, their coordinates, ROIs and betas.

``fsaverage`` (mem-spec 1.6-1.8): the Algonauts challenge vertices, then the vertices above the
noise-ceiling threshold. ``func1mm_hip``: NSD's func1mm thalamus and MTL voxels
(jobs/data/hippocampus.py). ``fship`` (the reference's memory-replay space): every fsaverage
vertex of both hemispheres, then the func1mm_hip voxels. Betas are z-scored per voxel over each
session's trials in every space; whole-surface vertices without data (NaN in every trial) stay 0
there, as the reference keeps them, while the selected fsaverage space refuses them.

Names: the reference's README calls the hippocampus space ``func1mm_hip``, its code ``hip_func1mm``;
memq uses the README's. The reference builds fship from the files of two earlier runs (spaces
full_fsaverage and hip_func1mm); one prepare-nsd run here reads the sources of both, with the same
values (it also divided the func1mm betas by 300 before z-scoring, which changes nothing beyond
the 1e-8 of the z-score's denominator).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jobs.data.betas import check_nan, zscore_session
from jobs.data.fsaverage import VertexSelection, noise_ceiling, read_mgh, read_sphere, select_vertices, side_by_side
from jobs.data.hcp import hcp_rois
from jobs.data.hippocampus import HippocampusSelection, load_volume, read_session_volume, select_hippocampus
from jobs.data.inputs import integer_valued, load_npy, reason
from jobs.data.layout import STREAM_ROIS, TRIALS_PER_SESSION, ChallengeLayout
from jobs.data.rois import random_rois
from memq.job import UserError

if TYPE_CHECKING:
    from jobs.data.nsd import NsdSources

HEMIS = ("lh", "rh")
# Algonauts stream labels 0..7 (mapping_streams.npy) and their ROI names (label 0 is RSC here)
STREAM_LABELS = ("unknown", "early", "midventral", "midlateral", "midparietal", "ventral", "lateral", "parietal")
NSDGENERAL, HCP_LABEL = "nsdgeneral", "HCP_MMP1"  # NSD's fsaverage label files that give the fship ROIs


@dataclass
class VoxelSpace:
    """One subject's voxels in a space and how to read one session's betas of them."""

    voxel_indices: np.ndarray
    coords: np.ndarray
    rois: dict[str, np.ndarray]
    session_betas: Callable[[int], np.ndarray]  # session -> float16 [750, n_voxels], z-scored
    summary: str  # for the log: what the voxels are
    challenge: ChallengeLayout | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


def _challenge_mask(src: NsdSources) -> list[np.ndarray]:
    masks = []
    for hemi in HEMIS:
        path = src.challenge_mask(hemi)
        mask = load_npy(path, "Algonauts challenge-vertex mask")
        if mask.ndim != 1:
            raise UserError(f"mask is {list(mask.shape)}, expected one value per fsaverage vertex", where=str(path))
        masks.append(integer_valued(path, "the mask", mask, 0, 1).astype(bool))
    return masks


def _check_stream_names(path: Path) -> None:
    if not path.is_file():
        return
    try:  # the challenge stores this {label: name} dict pickled
        names = np.load(path, allow_pickle=True).item()
        ok = all(str(names[k]).lower() == name for k, name in enumerate(STREAM_LABELS) if k)
    except (ValueError, KeyError, AttributeError, OSError) as exc:
        raise UserError(f"not the Algonauts stream-label dict ({reason(exc)})", where=str(path)) from exc
    if not ok:
        raise UserError(f"stream labels are {names}, expected 1..7 = {', '.join(STREAM_LABELS[1:])}", where=str(path))


def _stream_rois(src: NsdSources, selection: VertexSelection) -> dict[str, np.ndarray]:
    _check_stream_names(src.stream_names)
    labels = []
    for hemi, n in zip(HEMIS, (selection.n_lh, selection.n_challenge - selection.n_lh), strict=True):
        path = src.streams(hemi)
        hemi_labels = load_npy(path, "Algonauts stream labels")
        if hemi_labels.shape != (n,):
            what = f"{list(hemi_labels.shape)} labels, expected one per challenge vertex ({n})"
            raise UserError(what, where=str(path))
        labels.append(integer_valued(path, "stream labels", hemi_labels, 0, len(STREAM_LABELS) - 1))
    label = np.concatenate(labels)
    rois = {name: np.flatnonzero(label == k) for k, name in enumerate(STREAM_ROIS[:-1])}
    rois[STREAM_ROIS[-1]] = np.arange(selection.n_challenge, selection.voxel_indices.size)  # R: the added voxels
    return rois


def _surface_betas(src: NsdSources, session: int, voxels: np.ndarray, sizes: list[int], *, dead_ok: bool) -> np.ndarray:
    """float16 [750, n_voxels] of one session, z-scored per voxel, one hemisphere file at a time."""
    block = np.empty((TRIALS_PER_SESSION, voxels.size), dtype=np.float16)
    offset = 0
    for hemi, n in zip(HEMIS, sizes, strict=True):
        path = src.betas(hemi, session)
        data = read_mgh(path, f"{src.beta} betas of session {session}", n, TRIALS_PER_SESSION)
        columns = np.flatnonzero((voxels >= offset) & (voxels < offset + n))
        part = data.T[:, voxels[columns] - offset]  # trial rows are contiguous in the file
        del data  # unmap the file before the next one is read
        if not dead_ok:
            check_nan(part, path)
        block[:, columns] = zscore_session(part)  # int16 in NSD (300 x % signal change): the z-score drops the scale
        offset += n
    return block


def _sphere_coords(src: NsdSources, sizes: list[int]) -> np.ndarray:
    return side_by_side(*(read_sphere(src.sphere(h), n) for h, n in zip(HEMIS, sizes, strict=True)))


def fsaverage_space(src: NsdSources) -> VoxelSpace:
    """Challenge vertices, then the vertices above the automatic noise-ceiling threshold."""
    masks = _challenge_mask(src)
    sizes = [m.size for m in masks]
    ncsnr = [read_mgh(src.ncsnr(h), "noise-ceiling SNR", n, 1)[:, 0] for h, n in zip(HEMIS, sizes, strict=True)]
    challenge = np.concatenate(masks)
    if not challenge.any():
        raise UserError("the challenge masks select no vertex", where=str(src.challenge_mask("lh")))
    s: VertexSelection = select_vertices(challenge, noise_ceiling(np.concatenate(ncsnr)), sizes[0], src.nc_search)
    n = s.voxel_indices.size
    return VoxelSpace(
        voxel_indices=s.voxel_indices,
        coords=_sphere_coords(src, sizes)[s.voxel_indices],
        rois=_stream_rois(src, s) | random_rois(n),
        session_betas=lambda session: _surface_betas(src, session, s.voxel_indices, sizes, dead_ok=False),
        summary=f"{n} voxels = {s.n_challenge} challenge + {n - s.n_challenge} with NC > {s.threshold:.4f} "
        f"(mean NC {s.added_nc:.4f} vs {s.challenge_nc:.4f})",
        challenge=ChallengeLayout(s.n_challenge, s.n_lh, s.n_challenge - s.n_lh),
        attrs={
            "nc_threshold": s.threshold,
            "nc_search": src.nc_search,
            "nc_mean_challenge": s.challenge_nc,
            "nc_mean_added": s.added_nc,
        },
    )


def _hippocampus(src: NsdSources) -> HippocampusSelection:
    thalamus = load_volume(src.func1mm_roi("thalamus"), "NSD func1mm thalamus labels")
    mtl = load_volume(src.func1mm_roi("MTL"), "NSD func1mm MTL labels")
    return select_hippocampus(thalamus, mtl, src.func1mm_roi("MTL"))


def _hippocampus_betas(src: NsdSources, session: int, hip: HippocampusSelection) -> np.ndarray:
    what = f"{src.beta} func1mm betas of session {session}"
    return zscore_session(read_session_volume(src.volume_betas(session), what, hip))


def hippocampus_space(src: NsdSources) -> VoxelSpace:
    hip = _hippocampus(src)
    return VoxelSpace(
        voxel_indices=hip.voxel_indices,
        coords=hip.coords,
        rois=hip.rois,
        session_betas=lambda session: _hippocampus_betas(src, session, hip),
        summary=f"{hip.voxel_indices.size} thalamus and MTL voxels of the func1mm volume {list(hip.shape)}",
        attrs={"volume_shape": list(hip.shape)},
    )


def _surface_labels(src: NsdSources, sizes: list[int], name: str) -> np.ndarray:
    """The values of NSD's fsaverage label ``?h.NAME.mgz``, lh then rh."""
    what = f"NSD {name} label on fsaverage"
    hemis = zip(HEMIS, sizes, strict=True)
    return np.concatenate([read_mgh(src.surface_label(h, name), what, n, 1)[:, 0] for h, n in hemis])


def _surface_rois(src: NsdSources, sizes: list[int]) -> dict[str, np.ndarray]:
    """nsdgeneral (label value 1) and the HCP-MMP1 cortices and groups (jobs/data/hcp.py)."""
    nsdgeneral = np.flatnonzero(_surface_labels(src, sizes, NSDGENERAL) == 1)
    return {NSDGENERAL: nsdgeneral} | hcp_rois(_surface_labels(src, sizes, HCP_LABEL))


def fship_space(src: NsdSources) -> VoxelSpace:
    """Every fsaverage vertex (lh, rh), then the func1mm_hip voxels; their (i, j, k) coordinates are
    moved along x to start one unit past the spheres' largest x, their ROIs and source indices
    shifted past the vertices."""
    sizes = [m.size for m in _challenge_mask(src)]
    n_surface = sum(sizes)
    surface = _sphere_coords(src, sizes)
    hip = _hippocampus(src)
    hip_coords = hip.coords.copy()
    hip_coords[:, 0] += int(surface[:, 0].max()) - hip_coords[:, 0].min() + 1
    vertices = np.arange(n_surface, dtype=np.int64)

    def session_betas(session: int) -> np.ndarray:
        cortex = _surface_betas(src, session, vertices, sizes, dead_ok=True)
        return np.hstack([cortex, _hippocampus_betas(src, session, hip)])

    return VoxelSpace(
        voxel_indices=np.concatenate([vertices, n_surface + hip.voxel_indices]),
        coords=np.concatenate([surface, hip_coords]),
        rois=_surface_rois(src, sizes) | {name: p + n_surface for name, p in hip.rois.items()},
        session_betas=session_betas,
        summary=f"{n_surface} fsaverage vertices + {hip.voxel_indices.size} thalamus and MTL voxels",
        attrs={"n_surface": n_surface, "volume_shape": list(hip.shape)},
    )


BUILDERS: dict[str, Callable[[NsdSources], VoxelSpace]] = {
    "fsaverage": fsaverage_space,
    "func1mm_hip": hippocampus_space,
    "fship": fship_space,
}
