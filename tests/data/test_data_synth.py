from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from jobs.data.layout import STREAM_ROIS, list_subjects, open_images, open_subject
from jobs.data.synth import SynthInfo, load_truth, synthesize
from jobs.data.synth_images import pooled
from jobs.data.truth import synthetic_mark


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


def test_layout_of_the_default_dataset(synth: SynthInfo) -> None:
    assert list_subjects(synth.data_dir) == ["subj01", "subj02"] == synth.subjects
    for subject, n_voxels in zip(synth.subjects, (300, 240), strict=True):
        with open_subject(synth.data_dir / f"{subject}.h5") as f:
            assert (f.n_sessions, f.n_trials, f.n_voxels, f.n_beta_trials) == (4, 3000, n_voxels, 2250)
            assert np.array_equal(f.split("predict"), np.arange(2250, 3000))
            streams = np.concatenate([f.roi(name) for name in STREAM_ROIS])
            assert np.array_equal(np.sort(streams), np.arange(n_voxels))  # streams + R partition voxels
            clusters = np.concatenate([f.roi(f"w_{i}") for i in range(1, 10)])
            assert np.array_equal(np.sort(clusters), np.arange(n_voxels))
            assert len([name for name in f.roi_names() if name.startswith("r_")]) == 90
            challenge = f.challenge
            assert challenge.n_challenge == n_voxels - f.roi("R").size  # R (added voxels) comes last
            assert set(f.roi("R")) == set(range(challenge.n_challenge, n_voxels))
            vertex = f.voxel_indices()[: challenge.n_challenge]
            assert np.all(np.diff(vertex) > 0)  # challenge voxels by ascending vertex, lh first
            assert np.all(vertex[: challenge.n_lh] < 163_842) and np.all(vertex[challenge.n_lh :] >= 163_842)
            assert np.array_equal(f.challenge_images(), np.unique(f.memory_index()[2250:, 32]))
            betas = f.betas[()].astype(np.float64)
            for session in range(3):  # z-scored per session and voxel
                block = betas[750 * session : 750 * (session + 1)]
                np.testing.assert_allclose(block.mean(0), 0, atol=2e-3)
                np.testing.assert_allclose(block.std(0), 1, atol=2e-3)


def test_features_are_derived_from_the_images(synth: SynthInfo) -> None:
    with open_images(synth.data_dir / "images.h5") as f:
        assert (f.image_size, f.feature_dim) == (32, 16)
        images, features = f.images[()], f.features[()].astype(np.float64)
    assert images.std() > 30
    # features are a fixed linear map of the 8x8-pooled pixels: fit it on some images, check the rest
    pixels = pooled(images, 8).astype(np.float64) - 0.5
    assert len(images) > 2 * pixels.shape[1]
    projection = np.linalg.lstsq(pixels[:1000], features[:1000], rcond=None)[0]
    np.testing.assert_allclose(pixels[1000:] @ projection, features[1000:], atol=0.02)


def test_ceiling_is_recorded(synth: SynthInfo) -> None:
    for subject in synth.subjects:
        truth = load_truth(synth.data_dir, subject)
        expected = truth.planted.signal_std / np.sqrt(truth.planted.signal_std**2 + synth.noise**2)
        np.testing.assert_allclose(truth.r_ceiling, expected)
        np.testing.assert_allclose(synth.r_ceiling[subject], expected)
        with open_subject(synth.data_dir / f"{subject}.h5") as f:
            assert f.file.attrs["synth_noise"] == synth.noise
            assert f.file.attrs["synth_r_ceiling_mean"] == pytest.approx(expected.mean())
    assert 0.6 < synth.r_ceiling_mean < 0.75
    assert synth.r_ceiling_mean == pytest.approx(np.concatenate(list(synth.r_ceiling.values())).mean())


def test_the_data_says_it_is_synthetic(synth: SynthInfo) -> None:
    for subject in synth.subjects:
        with open_subject(synth.data_dir / f"{subject}.h5") as f:
            assert f.space == "synthetic" and f.file.attrs["synth_seed"] == 0
    assert synthetic_mark(synth.data_dir / "truth") == {"generator": "memq data synth", "seed": 0, "noise": 1.0}


def test_oracle_reaches_the_ceiling(synth: SynthInfo) -> None:
    for subject in synth.subjects:
        truth = load_truth(synth.data_dir, subject)
        with open_subject(synth.data_dir / f"{subject}.h5") as f:
            signal_var = truth.signal(np.arange(3000)).var(0)
            np.testing.assert_allclose(signal_var, truth.planted.signal_std**2, rtol=1e-4)
            train = f.split("train")
            r_train = _pearson(truth.signal(train), f.betas[train].astype(np.float64))
            assert np.abs(r_train - truth.r_ceiling).mean() < 0.03
            val1 = f.split("val1")
            r_val = _pearson(truth.signal(val1), f.betas[val1].astype(np.float64))
            assert abs(r_val.mean() - truth.r_ceiling.mean()) < 0.06
            assert np.corrcoef(r_train, truth.r_ceiling)[0, 1] > 0.9  # per-voxel ceilings are real
        r_predict = _pearson(truth.signal(np.arange(2250, 3000)), truth.betas_predict.astype(np.float64))
        assert abs(r_predict.mean() - truth.r_ceiling.mean()) < 0.03


def test_signal_depends_on_the_current_image(synth: SynthInfo) -> None:
    truth = load_truth(synth.data_dir, "subj01")
    with open_subject(synth.data_dir / "subj01.h5") as f:
        current = f.memory_index()[:, 32]
    _, first, inverse = np.unique(current, return_index=True, return_inverse=True)
    repeat = np.flatnonzero(np.arange(3000) != first[inverse])  # trials showing an image seen before
    earlier = first[inverse][repeat]
    # the image part dominates: two showings of one image have strongly correlated signals
    r = _pearson(truth.signal(repeat).T, truth.signal(earlier).T)
    assert np.median(r) > 0.8


def test_deterministic_and_sized_by_arguments(tmp_path: Path, synth: SynthInfo) -> None:
    info = synthesize(tmp_path, n_subjects=1, n_sessions=2, n_voxels=40, image_size=16, feature_dim=4, seed=0)
    again = synthesize(tmp_path / "again", n_subjects=1, n_sessions=2, n_voxels=40, image_size=16, feature_dim=4)
    with h5py.File(tmp_path / "subj01.h5") as a, h5py.File(tmp_path / "again" / "subj01.h5") as b:
        assert np.array_equal(a["betas"][()], b["betas"][()])
        assert np.array_equal(a["memory_index"][()], b["memory_index"][()])
        assert a["betas"].shape == (750, 40)
    assert np.array_equal(info.r_ceiling["subj01"], again.r_ceiling["subj01"])
    with open_images(tmp_path / "images.h5") as f:
        assert f.images.shape[1:] == (3, 16, 16) and f.features.shape[1] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_noise_sets_the_ceiling(tmp_path: Path) -> None:
    quiet = synthesize(tmp_path / "q", n_subjects=1, n_sessions=2, n_voxels=30, noise=0.1)
    loud = synthesize(tmp_path / "l", n_subjects=1, n_sessions=2, n_voxels=30, noise=3.0)
    assert quiet.r_ceiling_mean > 0.98 and loud.r_ceiling_mean < 0.4


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="one voxel count per subject"):
        synthesize("/nonexistent", n_subjects=3, n_voxels=(10, 20))
    with pytest.raises(ValueError, match="more than the 73000 NSD image ids"):
        synthesize("/nonexistent", n_subjects=8, n_sessions=40, n_voxels=100, repeats=1)
