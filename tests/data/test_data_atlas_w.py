"""`memq data atlas-w`: planted groups of readout weights come back as the ROIs w_1..w_9."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from jobs.data.atlas_w import ward_clusters
from jobs.data.layout import open_subject
from jobs.data.synth import SynthInfo

N_GROUPS = 9


@pytest.fixture
def data(synth: SynthInfo, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(synth.data_dir, target)
    return target


def _soup(path: Path, voxels: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Readout weights whose rows point in one of 9 random directions (scaled, slightly noisy)."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((N_GROUPS, 16))
    groups, state = {}, {}
    for subject, n in voxels.items():
        groups[subject] = rng.permutation(np.arange(n) % N_GROUPS)
        rows = directions[groups[subject]] * rng.uniform(0.5, 2, (n, 1)) + 0.05 * rng.standard_normal((n, 16))
        state[f"readout.{subject}.weight"] = torch.tensor(rows, dtype=torch.float32)
        state[f"readout.{subject}.bias"] = torch.zeros(n)
    state["behav_pt.subj01.weight"] = torch.zeros(3, 3)
    torch.save(state, path)
    return groups


def test_planted_groups_become_the_w_rois(data: Path, tmp_path: Path, memq) -> None:
    groups = _soup(tmp_path / "soup.pth", {"subj01": 300, "subj02": 240})
    with open_subject(data / "subj01.h5") as f:
        betas = f.betas[()]
    ran = memq("data", "atlas-w", data, "--from-soup", tmp_path / "soup.pth", "--k", 30)
    assert ran.code == 0, ran.err
    group_of_roi = {}
    for subject, group in groups.items():
        with open_subject(data / f"{subject}.h5") as f:
            rois = [f.roi(f"w_{i}") for i in range(1, 10)]
            assert np.array_equal(np.sort(np.concatenate(rois)), np.arange(group.size))
            for i, roi in enumerate(rois):
                assert np.unique(group[roi]).size == 1  # one planted group per ROI ...
                assert group_of_roi.setdefault(i, group[roi][0]) == group[roi][0]  # ... the same in every subject
            if subject == "subj01":
                assert np.array_equal(f.betas[()], betas) and f.roi("E").size > 0  # the rest is kept
    assert sorted(group_of_roi.values()) == list(range(N_GROUPS))
    again = memq("data", "atlas-w", data, "--from-soup", tmp_path / "soup.pth", "--k", 30)
    assert again.code == 0 and "already has atlas W from this soup" in again.out
    assert memq("data", "check", data).code == 0


def test_soup_must_fit_the_data(data: Path, tmp_path: Path, memq) -> None:
    cases = {
        "others.pth": ({"subj01": 300}, "the soup has readout weights for subj01, the data for subj01, subj02"),
        "rows.pth": ({"subj01": 300, "subj02": 239}, "subj02: 239 readout rows, but 240 voxels"),
    }
    for name, (voxels, message) in cases.items():
        _soup(tmp_path / name, voxels)
        ran = memq("data", "atlas-w", data, "--from-soup", tmp_path / name, "--k", 30)
        assert ran.code == 2 and message in ran.err and ran.err.count("\n") == 1, ran.err
    torch.save({"model.other.weight": torch.zeros(2, 2)}, tmp_path / "none.pth")
    ran = memq("data", "atlas-w", data, "--from-soup", tmp_path / "none.pth")
    assert ran.code == 2 and "no per-voxel readout weights" in ran.err
    ran = memq("data", "atlas-w", data, "--from-soup", tmp_path / "missing.pth")
    assert ran.code == 2 and "missing soup file" in ran.err
    with h5py.File(data / "subj01.h5") as f:
        assert "atlas_w_source" not in f.attrs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ward_cut_gives_exactly_nine(seed: int) -> None:
    centroids = np.random.default_rng(seed).standard_normal((60, 8))
    labels = ward_clusters(centroids)
    assert sorted(set(labels)) == list(range(9)) and labels.shape == (60,)
