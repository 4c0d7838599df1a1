"""The test truth of a synthetic subject (``DIR/truth/``, format ``jobs/data/TRUTH.md``).

The predict sessions play the Algonauts test sessions: each challenge image's measured response is
the mean of its predict trials' z-scored betas, its repeats are counted from the design, and ncsnr
is exact: z-scoring scales signal and noise alike, so ncsnr = signal_std / noise. Stream labels
come from the stream ROIs of the challenge voxels. ``synthetic.json`` marks the directory as made,
not measured (``jobs/data/TRUTH.md``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jobs.data.layout import N_SLOTS, SubjectMeta
from jobs.data.truth import STREAM_NAMES, SYNTHETIC_FILE, HemiTruth, SubjectTruth, write_truth

TRUTH_DIR = "truth"
GENERATOR = "memq data synth"


def stream_labels(rois: dict[str, np.ndarray], n_challenge: int) -> np.ndarray:
    """Stream label (index in ``STREAM_NAMES``) of each challenge voxel position."""
    labels = np.full(n_challenge, -1, dtype=np.int64)
    for k, name in enumerate(STREAM_NAMES):
        positions = rois[name]
        labels[positions[positions < n_challenge]] = k
    assert np.all(labels >= 0)  # the stream ROIs partition the voxels (jobs/data/synth_subject.py)
    return labels


def write_synth_truth(
    out_dir: Path, meta: SubjectMeta, betas_predict: np.ndarray, signal_std: np.ndarray, noise: float
) -> Path:
    """Write ``out_dir/truth/<subject>/`` from the predict split's betas (rows = predict trials)."""
    challenge = meta.challenge
    assert challenge is not None and meta.challenge_images is not None  # the generator sets both
    predict_images = meta.memory_index[meta.splits["predict"], N_SLOTS - 1]
    images, inverse, repeats = np.unique(predict_images, return_inverse=True, return_counts=True)
    assert np.array_equal(images, meta.challenge_images)  # the submission's row order
    sums = np.zeros((images.size, challenge.n_challenge))
    np.add.at(sums, inverse, betas_predict[:, : challenge.n_challenge].astype(np.float64))
    fmri = sums / repeats[:, None]
    ncsnr = signal_std[: challenge.n_challenge] / noise
    streams = stream_labels(dict(meta.rois), challenge.n_challenge)
    parts = {"lh": slice(0, challenge.n_lh), "rh": slice(challenge.n_lh, challenge.n_challenge)}
    hemis = {hemi: HemiTruth(fmri[:, cols], ncsnr[cols], streams[cols]) for hemi, cols in parts.items()}
    return write_truth(out_dir / TRUTH_DIR, meta.subject, SubjectTruth(hemis, repeats))


def mark_synthetic(out_dir: Path, seed: int, noise: float) -> Path:
    """Write ``out_dir/truth/synthetic.json``: the generator and the settings that made the truth."""
    path = out_dir / TRUTH_DIR / SYNTHETIC_FILE
    path.write_text(json.dumps({"generator": GENERATOR, "seed": seed, "noise": noise}) + "\n")
    return path
