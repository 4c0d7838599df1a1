"""Voxel-wise scores on the cortical surface: nilearn's bundled fsaverage5 meshes, nothing downloaded.

The fsaverage meshes are nested icosahedra: the first 10,242 vertices of each fsaverage (fsaverage7)
hemisphere are the fsaverage5 vertices, at the same places. A challenge vertex with fsaverage id
``v < 10,242`` in its hemisphere is therefore drawn at fsaverage5 vertex ``v``; the others (about
15 of every 16) are not drawn. Prepared fsaverage data numbers vertices lh first, so a subject's
rh vertex ``v`` has voxel index ``163,842 + v`` (``jobs/data/FORMAT.md``). Each fsaverage5 vertex
shows the mean over the subjects that have it; a face takes the mean of its vertices with a value,
vertices with none stay blank.

Synthetic data (``space = "synthetic"``, ``memq data synth``) draws its voxel indices at random
among the same fsaverage ids with no anatomy behind them; the same mapping places the ~1/16 of
them below 10,242 at those vertices, so its map is scattered dots.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from jobs.data.layout import open_subject, subject_path
from jobs.data.truth import HEMIS
from memq.job import UserError

FS7_VERTICES = 163_842  # per hemisphere
FS5_VERTICES = 10_242
SURFACE_SPACES = ("fsaverage", "synthetic")
VIEWS = ("lateral", "medial", "ventral")
HEMI_NAMES = {"lh": "left", "rh": "right"}
CMAP = "inferno"


def challenge_vertices(data_dir: Path, subject: str, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """hemi -> fsaverage vertex id of each challenge vertex of ``subject`` (in submission column order)."""
    path = subject_path(data_dir, subject)
    with open_subject(path) as f:
        challenge, space, voxel_indices = f.challenge, f.space, f.voxel_indices()
    if space not in SURFACE_SPACES:
        raise UserError(f"space {space!r} has no fsaverage vertices", where=str(path))
    if challenge is None or (challenge.n_lh, challenge.n_rh) != (sizes["lh"], sizes["rh"]):
        raise UserError(f"challenge layout {challenge} does not match the scored vertices {sizes}", where=str(path))
    lh, rh = voxel_indices[: challenge.n_lh], voxel_indices[challenge.n_lh : challenge.n_challenge]
    return {"lh": lh, "rh": rh - FS7_VERTICES}


def fsaverage5_mean(subjects: Sequence[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """hemi -> [10242] mean over ``(vertices, values)`` pairs (one per subject); NaN where none has the vertex."""
    out = {}
    for hemi in HEMIS:
        total, count = np.zeros(FS5_VERTICES), np.zeros(FS5_VERTICES)
        for vertices, values in subjects:
            keep = vertices[hemi] < FS5_VERTICES
            np.add.at(total, vertices[hemi][keep], values[hemi][keep])
            np.add.at(count, vertices[hemi][keep], 1)
        out[hemi] = np.divide(total, count, out=np.full(FS5_VERTICES, np.nan), where=count > 0)
    return out


def surface_figure(maps: dict[str, np.ndarray], vmax: float = 100.0) -> Figure:
    """Both hemispheres (rows) of ``maps`` in several views (columns) on the inflated fsaverage5 mesh."""
    from nilearn.datasets import load_fsaverage, load_fsaverage_data
    from nilearn.plotting import plot_surf_stat_map

    mesh = load_fsaverage("fsaverage5")["inflated"]
    sulcal = load_fsaverage_data(mesh="fsaverage5", mesh_type="inflated", data_type="sulcal")
    figure = Figure(figsize=(3.6 * len(VIEWS), 3.2 * len(HEMIS)))
    axes = figure.subplots(len(HEMIS), len(VIEWS), subplot_kw={"projection": "3d"}, squeeze=False)
    for row, hemi in zip(axes, HEMIS, strict=True):
        name = HEMI_NAMES[hemi]
        for ax, view in zip(row, VIEWS, strict=True):
            with warnings.catch_warnings():  # faces without any value: "Mean of empty slice"
                warnings.simplefilter("ignore", RuntimeWarning)
                plot_surf_stat_map(
                    mesh.parts[name], maps[hemi], bg_map=sulcal.data.parts[name], hemi=name, view=view,
                    engine="matplotlib", axes=ax, figure=figure, cmap=CMAP, vmin=0, vmax=vmax,
                    symmetric_cbar=False, colorbar=False, avg_method="nanmean", title=f"{hemi} {view}",
                )  # fmt: skip
    figure.colorbar(
        ScalarMappable(Normalize(0, vmax), CMAP),
        ax=axes.ravel().tolist(),
        shrink=0.5,
        label="noise-normalised score (%)",
    )
    return figure
