"""Shared fixtures: one default synthetic dataset per test session and a tiny hand-made subject."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from jobs.data.layout import FILL_ROW, N_SLOTS, ChallengeLayout, SubjectMeta
from jobs.data.memory import memory_index_from_design
from jobs.data.rois import random_rois
from jobs.data.splits import split_trials
from jobs.data.synth import SynthInfo, synthesize
from jobs.data.synth_subject import trial_design


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthInfo:
    return synthesize(tmp_path_factory.mktemp("synth"))


def _tiny_meta(n_sessions: int = 2, n_voxels: int = 12, subject: str = "subj01") -> SubjectMeta:
    rng = np.random.default_rng(0)
    design = trial_design(rng, np.arange(5000, 5600), n_sessions, repeats=3)
    memory_index = memory_index_from_design(design)
    n_trials = memory_index.shape[0]
    return SubjectMeta(
        subject=subject,
        space="synthetic",
        behavior=np.vstack([rng.standard_normal((n_trials, 35)), FILL_ROW]),
        memory_index=memory_index,
        splits=split_trials(memory_index[:, N_SLOTS - 1], 1),
        coords=rng.standard_normal((n_voxels, 3)),
        voxel_indices=np.arange(100, 100 + n_voxels),
        rois={"E": np.array([3, 1, 2]), "R": np.array([], dtype=np.int64), **random_rois(n_voxels)},
        n_beta_trials=750,
        challenge=ChallengeLayout(n_voxels - 2, 4, n_voxels - 6),
        attrs={"note": "tiny"},
    )


@pytest.fixture
def tiny_meta() -> Callable[..., SubjectMeta]:
    """Factory of valid subjects with one training session, the rest predict (fresh arrays each call)."""
    return _tiny_meta
