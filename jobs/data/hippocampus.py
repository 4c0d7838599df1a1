"""The func1mm hippocampus space (``func1mm_hip``): NSD's thalamus and MTL voxels of one subject.

Voxels are every voxel of ``func1mm/roi/thalamus.nii.gz`` or ``MTL.nii.gz`` with a label above 0
(NSD marks voxels outside the brain -1), in C order of the volume array as nibabel returns it
(flat index ``(i * ny + j) * nz + k``). Coordinates are the voxels' (i, j, k). ROIs follow the
reference: thalamus labels 1..5 and MTL labels 1..10 (shifted past the thalamus's largest label,
then added to it) name 15 ROIs, and four unions of them are added.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs.data.inputs import reason, require_file
from jobs.data.layout import TRIALS_PER_SESSION
from memq.job import UserError

THALAMUS_ROIS = ("LGN", "SC", "Vpu", "DLpu", "DMpu")
MTL_ROIS = ("ErC", "area35", "area36", "PhC", "Sub", "CA1", "CA2", "CA3", "DG", "HT")
MERGED_ROIS = {  # in the reference's order of writing; H builds on HHHB
    "HHHB": ("Sub", "CA1", "CA2", "CA3", "DG"),
    "H": ("HHHB", "HT"),
    "PrC": ("area35", "area36"),
    "pulvinar": ("Vpu", "DLpu", "DMpu"),
}


def load_volume(path: Path, what: str) -> np.ndarray:
    """A 3-d NIfTI volume as float64 (nibabel's scaling applied)."""
    import nibabel

    require_file(path, what)
    try:
        data = np.asarray(nibabel.load(path).get_fdata())
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise UserError(f"not a readable NIfTI file ({reason(exc)})", where=str(path), hint=f"expected {what}") from exc
    if data.ndim != 3:
        raise UserError(f"{what} is {list(data.shape)}, expected a 3-d volume", where=str(path))
    return data


@dataclass(frozen=True)
class HippocampusSelection:
    """The selected voxels of one subject's func1mm volume."""

    shape: tuple[int, int, int]  # the volume's
    voxel_indices: np.ndarray  # int64 flat C-order indices, ascending
    coords: np.ndarray  # float32 [n, 3]: (i, j, k)
    rois: dict[str, np.ndarray]  # positions among the selected voxels


def select_hippocampus(thalamus: np.ndarray, mtl: np.ndarray, where: Path) -> HippocampusSelection:
    """Voxels labelled in either volume, and the ROIs their labels name (module docstring)."""
    if thalamus.shape != mtl.shape:
        raise UserError(f"MTL volume is {list(mtl.shape)}, thalamus {list(thalamus.shape)}", where=str(where))
    mask = (thalamus > 0) | (mtl > 0)
    if not mask.any():
        raise UserError("thalamus and MTL label no voxel", where=str(where))
    label = np.where(mtl != 0, mtl + int(thalamus.max()), 0) + thalamus  # the reference's arithmetic
    selected = label.reshape(-1)[mask.reshape(-1)]
    rois = {name: np.flatnonzero(selected == k) for k, name in enumerate(THALAMUS_ROIS + MTL_ROIS, start=1)}
    for name, parts in MERGED_ROIS.items():
        rois[name] = np.concatenate([rois[part] for part in parts])
    return HippocampusSelection(
        shape=mask.shape,  # type: ignore[arg-type]
        voxel_indices=np.flatnonzero(mask.reshape(-1)).astype(np.int64),
        coords=np.argwhere(mask).astype(np.float32),
        rois={name: positions.astype(np.int64) for name, positions in rois.items()},
    )


def read_session_volume(path: Path, what: str, selection: HippocampusSelection) -> np.ndarray:
    """[750, n] float betas of the selected voxels from a 4-d session file [x, y, z, 750]; only the
    selection's bounding box is read (the file is one volume per trial, gzip-compressed)."""
    import nibabel

    require_file(path, what)
    try:
        image = nibabel.load(path)
        shape = tuple(int(d) for d in image.shape)
        if shape != (*selection.shape, TRIALS_PER_SESSION):
            raise UserError(
                f"{what} is {list(shape)}, expected {[*selection.shape, TRIALS_PER_SESSION]} (the ROI volumes')",
                where=str(path),
            )
        ijk = selection.coords.astype(np.int64)
        lo, hi = ijk.min(axis=0), ijk.max(axis=0) + 1
        box = np.asarray(image.dataobj[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2], :])
    except UserError:
        raise
    except Exception as exc:  # nibabel and zlib raise several types for damaged files
        raise UserError(f"not a readable NIfTI file ({reason(exc)})", where=str(path), hint=f"expected {what}") from exc
    local = ijk - lo
    return box[local[:, 0], local[:, 1], local[:, 2], :].T
