"""The HCP-MMP1 ROIs of the fship space: NSD's ``label/?h.HCP_MMP1.mgz`` on fsaverage, grouped as
the reference groups them: the 180 areas into Glasser et al.'s 22 cortices, those into 5 groups.

A vertex belongs to cortex c when its label is an area k of c, or k + 180 (the reference accepts
both numberings). ROI positions are vertex indices (lh then rh), sorted. The fship ROIs of the
reference's full_fsaverage space, with nsdgeneral.
"""

from __future__ import annotations

import numpy as np

CORTICES = (
    "Primary_Visual", "Early_Visual", "Dorsal_Stream_Visual", "Ventral_Stream_Visual",
    "MT+_Complex_and_Neighboring_Visual_Areas", "Somatosensory_and_Motor", "Paracentral_Lobular_and_Mid_Cingulate",
    "Premotor", "Posterior_Opercular", "Early_Auditory", "Auditory_Association", "Insular_and_Frontal_Opercular",
    "Medial_Temporal", "Lateral_Temporal", "Temporo-Parieto-Occipital_Junction", "Superior_Parietal",
    "Inferior_Parietal", "Posterior_Cingulate", "Anterior_Cingulate_and_Medial_Prefrontal",
    "Orbital_and_Polar_Frontal", "Inferior_Frontal", "Dorsolateral_Prefrontal",
)  # fmt: skip
# the cortex (1..22) of areas 1..177 in order: the reference's list has 177 entries, so areas 178-180
# are in no cortex there, nor here
AREA_CORTEX = (
    1, 5, 3, 2, 2, 2, 4, 6, 6, 8, 8, 8, 3, 18, 18, 3, 3, 4, 3, 5, 5, 4, 5, 10, 15, 22, 18, 15, 16, 18,
    18, 18, 18, 18, 7, 7, 7, 7, 7, 7, 16, 7, 7, 16, 16, 16, 16, 16, 6, 6, 6, 8, 7, 8, 19, 19, 19, 19, 19,
    19, 19, 19, 20, 22, 22, 19, 22, 22, 20, 22, 21, 21, 21, 21, 8, 21, 21, 21, 21, 22, 22, 22, 22, 22,
    19, 20, 20, 20, 20, 20, 20, 16, 8, 22, 22, 9, 9, 9, 9, 10, 10, 10, 12, 11, 12, 12, 12, 12, 12, 9, 12,
    12, 17, 16, 13, 13, 13, 18, 13, 11, 10, 11, 13, 13, 11, 11, 11, 14, 14, 14, 14, 13, 14, 14, 5, 15,
    15, 15, 18, 17, 17, 17, 17, 17, 17, 17, 17, 17, 3, 4, 4, 13, 5, 5, 5, 5, 4, 18, 18, 4, 19, 19, 19,
    12, 12, 12, 20, 21, 14, 10, 10, 11, 11, 14, 12, 19, 19,
)  # fmt: skip
GROUPS = {  # cortices 1-5, 6-9, 10-14, 15-18, 19-22
    "Visual": CORTICES[0:5],
    "Somatomotor": CORTICES[5:9],
    "Auditory": CORTICES[9:14],
    "Posterior": CORTICES[14:18],
    "Anterior": CORTICES[18:22],
}
N_AREAS = 180


def hcp_rois(labels: np.ndarray) -> dict[str, np.ndarray]:
    """The 22 cortices and 5 groups of vertices labelled ``labels`` (HCP_MMP1 values, lh then rh)."""
    labels = np.asarray(labels)
    rois = {}
    for c, name in enumerate(CORTICES, start=1):
        areas = [k for k, cortex in enumerate(AREA_CORTEX, start=1) if cortex == c]
        rois[name] = np.flatnonzero(np.isin(labels, [*areas, *(k + N_AREAS for k in areas)]))
    for name, members in GROUPS.items():
        rois[name] = np.unique(np.concatenate([rois[m] for m in members]))
    return {name: positions.astype(np.int64) for name, positions in rois.items()}
