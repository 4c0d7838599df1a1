"""The image-disjoint train/val1/val2 split of the training sessions and the predict split (mem-spec 1.2)."""

from __future__ import annotations

import numpy as np

from jobs.data.layout import TRIALS_PER_SESSION

SPLIT_SEED = 114514
TRAIN_FRACTION = 0.94
VAL1_END_FRACTION = 0.98


def split_trials(current_images: np.ndarray, n_train_sessions: int, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Sorted int64 trial indices of ``train``, ``val1``, ``val2`` and ``predict``.

    ``current_images`` is the T=0 image id of every trial (``memory_index[:, 32]``). The sorted
    unique images of the first ``n_train_sessions`` sessions are shuffled with NumPy's legacy
    global RNG seeded with ``seed`` (as the reference does, so the split matches it); the first
    floor(0.94 U) go to train, up to floor(0.98 U) to val1, the rest to val2, and each split takes
    every training-session trial of its images. ``predict`` is every later trial. The caller's
    global RNG state is restored.
    """
    n_train = TRIALS_PER_SESSION * n_train_sessions
    if not 0 < n_train <= len(current_images):
        raise ValueError(f"{n_train_sessions} training sessions do not fit {len(current_images)} trials")
    train_images = current_images[:n_train]
    images = np.unique(train_images)
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        np.random.shuffle(images)
    finally:
        np.random.set_state(state)
    cut1, cut2 = int(np.floor(TRAIN_FRACTION * images.size)), int(np.floor(VAL1_END_FRACTION * images.size))
    groups = {"train": images[:cut1], "val1": images[cut1:cut2], "val2": images[cut2:]}
    splits = {name: np.flatnonzero(np.isin(train_images, ids)).astype(np.int64) for name, ids in groups.items()}
    splits["predict"] = np.arange(n_train, len(current_images), dtype=np.int64)
    return splits
