"""Units of the NSD readers: noise-ceiling bisection, sphere placement, MATLAB v7.3 designs, job params."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from jobs.data.expdesign import read_expdesign
from jobs.data.fsaverage import nc_threshold, select_vertices, side_by_side
from jobs.data.params import validate_cache_features, validate_prepare_nsd
from tests.data.nsd_fake import FakeNsd


def _top_means(values: np.ndarray) -> np.ndarray:
    ordered = np.sort(values)[::-1]
    return np.array([ordered[: k + 1].mean() for k in range(ordered.size)])


@pytest.mark.parametrize("seed", range(5))
def test_threshold_reaches_the_target_mean(seed: int) -> None:
    rng = np.random.default_rng(seed)
    candidates = rng.beta(2, 5, 5000)
    target = rng.uniform(0.35, 0.8)
    th = nc_threshold(candidates, target)
    added = candidates[candidates > th]
    assert abs(added.mean() - target) <= 0.001
    assert np.any(np.abs(_top_means(candidates) - target) <= 0.001)  # reachable: the search must find it


def test_threshold_edges() -> None:
    values = np.array([0.9, 0.8, 0.7, np.nan])
    assert (values > nc_threshold(values, 0.5)).sum() == 3  # even all of them lie above: add all
    assert (values > nc_threshold(values, 0.95)).sum() == 1  # not even the best reaches it: the closest
    coarse = np.array([0.9, 0.1])  # no threshold gets within 0.001 of 0.6: the closest mean wins
    assert (coarse > nc_threshold(coarse, 0.6)).sum() == 2
    assert nc_threshold(np.array([np.nan]), 0.5) == np.inf


def test_selection_orders_challenge_then_added() -> None:
    challenge = np.zeros(10, dtype=bool)
    challenge[[1, 6, 8]] = True
    nc = np.array([0.9, 0.5, 0.1, 0.5, 0.95, 0.2, 0.5, 0.3, 0.5, np.nan])
    selection = select_vertices(challenge, nc, n_lh_vertices=5)
    assert selection.voxel_indices.tolist()[:3] == [1, 6, 8] and selection.n_lh == 1
    assert selection.n_challenge == 3 and selection.challenge_nc == pytest.approx(0.5)
    added = selection.voxel_indices[3:]
    assert np.all(np.diff(added) > 0) and 9 not in added


def test_hemispheres_side_by_side() -> None:
    lh = np.array([[-1.0, 0, 0], [3.0, 1, 1]])
    rh = np.array([[10.0, 0, 0], [12.0, 5, 5]])
    both = side_by_side(lh, rh)
    assert both[2, 0] == -1 + 1.5 * 4 and both[3, 0] == -1 + 1.5 * 4 + 2
    assert np.array_equal(both[:2], lh) and np.array_equal(both[2:, 1:], rh[:, 1:])


def test_matlab_v73_design_reads_like_v5(nsd_tree: FakeNsd, tmp_path: Path) -> None:
    v5 = read_expdesign(nsd_tree.nsd_dir / "nsddata/experiments/nsd/nsd_expdesign.mat")
    mat = scipy.io.loadmat(v5.path)
    with h5py.File(tmp_path / "v73.mat", "w", userblock_size=512) as f:
        for key in ("masterordering", "subjectim", "stimpattern"):
            f.create_dataset(key, data=np.asarray(mat[key]).T)  # MATLAB writes column-major
    with open(tmp_path / "v73.mat", "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file".ljust(116) + b"\x00" * 8 + b"\x00\x02IM")
    v73 = read_expdesign(tmp_path / "v73.mat")
    assert np.array_equal(v73.slots("subj02"), v5.slots("subj02"))
    assert np.array_equal(v73.trial_images("subj01"), v5.trial_images("subj01"))


def test_job_params_are_checked_at_submit() -> None:
    good = {"nsd_dir": "/n", "alg_dir": "/a", "out": "/o", "subject": "subj03"}
    validate_prepare_nsd(good)
    validate_prepare_nsd({**good, "subject": 3, "beta": "b2"})
    for bad, message in (
        ({**good, "betta": "b2"}, "betta: unknown parameter; did you mean beta?"),
        ({k: v for k, v in good.items() if k != "out"}, "missing parameter out"),
        ({**good, "subject": "s3"}, "'s3' is not a subject"),
        ({**good, "space": "func1mm"}, "space: 'func1mm'"),
    ):
        with pytest.raises(ValueError, match=message):
            validate_prepare_nsd(bad)
    validate_cache_features({"data_dir": "/d"})  # dinov2_vitl14, looked up when the root is known
    validate_cache_features({"data_dir": "/d", "weights": "random"})
    with pytest.raises(ValueError, match=r"^weights: '/w.safetensors' is not a weights name"):
        validate_cache_features({"data_dir": "/d", "weights": "/w.safetensors"})
    with pytest.raises(ValueError, match=r"^weights: no weights named 'dinov2_vitl14' on the root /nowhere"):
        validate_cache_features({"data_dir": "/d"}, Path("/nowhere"))
    with pytest.raises(ValueError, match="random_init: unknown parameter"):
        validate_cache_features({"data_dir": "/d", "random_init": True})
