"""Synthetic subjects: an NSD-like trial design, a voxel layout with ROIs, and plausible behaviour."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jobs.data.behavior import TrialRecords, base_behavior, memory_counts
from jobs.data.layout import (
    BLANK,
    RUNS_PER_SESSION,
    SLOTS_PER_RUN,
    STREAM_ROIS,
    TRIALS_PER_SESSION,
    ChallengeLayout,
)
from jobs.data.rois import random_rois

FSAVERAGE_VERTICES = 163_842  # per hemisphere
SPHERE_RADIUS = 100.0
LEAD_IN_BLANKS = 3  # NSD runs start with blank slots
SLOT_SECONDS = 4.0
RUN_SLOTS_WITH_BREAK = SLOTS_PER_RUN + 15  # a one-minute break between runs
N_CLUSTERS = 9


def trial_design(rng: np.random.Generator, images: np.ndarray, n_sessions: int, repeats: int) -> np.ndarray:
    """int64 [n_sessions, 12, 75]: 73k id per trial slot, ``BLANK`` for blank slots.

    Each image is shown up to ``repeats`` times in random order; runs hold 62 or 63 stimuli at
    random slots after a short blank lead-in (750 per session, as in NSD).
    """
    n_trials = TRIALS_PER_SESSION * n_sessions
    if images.size * repeats < n_trials:
        raise ValueError(f"{images.size} images x {repeats} repeats cannot fill {n_trials} trials")
    sequence = rng.permutation(np.repeat(images, repeats))[:n_trials]
    stimulus = np.zeros((n_sessions, RUNS_PER_SESSION, SLOTS_PER_RUN), dtype=bool)
    base, extra = divmod(TRIALS_PER_SESSION, RUNS_PER_SESSION)
    for session in stimulus:
        long_runs = rng.choice(RUNS_PER_SESSION, extra, replace=False)
        for run, slots in enumerate(session):
            count = base + int(run in long_runs)
            slots[rng.choice(np.arange(LEAD_IN_BLANKS, SLOTS_PER_RUN), count, replace=False)] = True
    design = np.full(stimulus.shape, BLANK, dtype=np.int64)
    design[stimulus] = sequence
    return design


@dataclass
class VoxelLayout:
    coords: np.ndarray
    voxel_indices: np.ndarray
    rois: dict[str, np.ndarray]
    challenge: ChallengeLayout


def _nearest_centre(rng: np.random.Generator, coords: np.ndarray, k: int) -> np.ndarray:
    centres = coords[rng.choice(len(coords), k, replace=False)]
    return np.argmin(((coords[:, None] - centres[None]) ** 2).sum(-1), axis=1)


def voxel_layout(rng: np.random.Generator, n_voxels: int) -> VoxelLayout:
    """fsaverage-like voxels: random vertices of two side-by-side spheres, ordered like real data.

    Streams and w-clusters are Voronoi cells of random voxels (stand-ins for the real atlases);
    the stream cell "R" plays the added high-NC voxels, so it comes last and the other voxels are
    the challenge voxels, lh before rh, each by ascending vertex.
    """
    if n_voxels < 2 * N_CLUSTERS:
        raise ValueError(f"need at least {2 * N_CLUSTERS} voxels, got {n_voxels}")
    vertex = np.sort(rng.choice(2 * FSAVERAGE_VERTICES, n_voxels, replace=False))
    rh = vertex >= FSAVERAGE_VERTICES
    points = rng.standard_normal((n_voxels, 3))
    coords = SPHERE_RADIUS * points / np.linalg.norm(points, axis=1, keepdims=True)
    coords[rh, 0] += 3 * SPHERE_RADIUS  # rh starts at lh_xmin + 1.5 * lh x-range, as in mem-spec 1.7
    streams = _nearest_centre(rng, coords, len(STREAM_ROIS))
    added = streams == len(STREAM_ROIS) - 1
    order = np.lexsort((vertex, added))
    streams, added, rh = streams[order], added[order], rh[order]
    clusters = _nearest_centre(rng, coords[order], N_CLUSTERS)
    rois = {name: np.flatnonzero(streams == k) for k, name in enumerate(STREAM_ROIS)}
    rois |= {f"w_{k + 1}": np.flatnonzero(clusters == k) for k in range(N_CLUSTERS)}
    rois |= random_rois(n_voxels)
    n_lh = int((~added & ~rh).sum())
    challenge = ChallengeLayout(int((~added).sum()), n_lh, int((~added & rh).sum()))
    return VoxelLayout(coords[order].astype(np.float32), vertex[order], rois, challenge)


def behavior_base(rng: np.random.Generator, design: np.ndarray) -> np.ndarray:
    """float32 [n_trials, 21]: base behaviour columns of mem-spec 1.4, random but consistent.

    Memory columns (seen before, time and trials since the recent/first showing) follow from the
    design; run and trial columns are exact; responses (RT, button, correctness) are random with
    old images answered faster and more often "old".
    """
    session, run, slot = np.nonzero(design != BLANK)
    images = design[session, run, slot]
    n = images.size
    g = np.arange(n)
    run_id = session * RUNS_PER_SESSION + run
    trial_in_run = g - np.searchsorted(run_id, run_id) + 1  # trials are in run order
    days = 7.0 * session + (run * RUN_SLOTS_WITH_BREAK + slot) * SLOT_SECONDS / 86400
    memory_recent, memory_first = memory_counts(images)
    seen = ~np.isnan(memory_recent)
    prev = g - np.nan_to_num(memory_recent).astype(np.int64) - 1
    old_current = seen & (session[np.where(seen, prev, 0)] == session)

    rt = np.exp(rng.normal(np.log(0.8), 0.25, n)) - 0.1 * seen
    button = np.where(rng.random(n) < np.where(seen, 0.8, 0.2), 2.0, 1.0)
    records = TrialRecords(
        session=session,
        run=run + 1.0,
        trial=trial_in_run.astype(np.float64),
        time=days,
        rt=rt,
        button=button,
        change_mind=(rng.random(n) < 0.03).astype(float),
        total1=rng.poisson(2.0, n).astype(float),
        total2=rng.poisson(1.0, n).astype(float),
        is_correct=((button == 2) == seen).astype(float),
        is_correct_current=((button == 2) == old_current).astype(float),
        is_old_current=old_current.astype(float),
        memory_recent=memory_recent,
        memory_first=memory_first,
    )
    return base_behavior(records).astype(np.float32)
