"""A small synthetic dataset with its test truth, and submissions for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jobs.data.layout import N_SLOTS, open_subject
from jobs.data.synth import SynthInfo, load_truth, synthesize


@pytest.fixture(scope="session")
def synth_eval(tmp_path_factory: pytest.TempPathFactory) -> SynthInfo:
    """Two subjects, one training and one predict session (truth in ``data_dir / "truth"``). Do not modify."""
    return synthesize(tmp_path_factory.mktemp("synth"), n_sessions=2, n_voxels=(200, 160), image_size=16, feature_dim=4)


def planted_test_signal(info: SynthInfo, subject: str) -> np.ndarray:
    """[n_test, n_challenge] the noiseless planted signal averaged over each challenge image's predict trials."""
    truth = load_truth(info.data_dir, subject)
    with open_subject(info.data_dir / f"{subject}.h5") as f:
        trials, challenge = f.split("predict"), f.challenge
        images = f.memory_index()[trials, N_SLOTS - 1]
        order = f.challenge_images()
    assert challenge is not None and order is not None
    signal = truth.signal(trials)[:, : challenge.n_challenge].astype(np.float64)
    rows = np.searchsorted(order, images)
    sums = np.zeros((order.size, signal.shape[1]))
    np.add.at(sums, rows, signal)
    return sums / np.bincount(rows, minlength=order.size)[:, None]


def write_submission(out: Path, info: SynthInfo, predict: dict[str, np.ndarray]) -> Path:
    """Write ``out/subjXX/{lh,rh}_pred_test.npy`` from whole-challenge predictions [n_test, n_challenge]."""
    for subject, values in predict.items():
        with open_subject(info.data_dir / f"{subject}.h5") as f:
            n_lh = f.challenge.n_lh
        (out / subject).mkdir(parents=True, exist_ok=True)
        np.save(out / subject / "lh_pred_test.npy", values[:, :n_lh].astype(np.float32))
        np.save(out / subject / "rh_pred_test.npy", values[:, n_lh:].astype(np.float32))
    return out
