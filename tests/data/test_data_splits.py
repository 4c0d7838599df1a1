from __future__ import annotations

import numpy as np
import pytest

from jobs.data.splits import split_trials


def _images(n_sessions: int = 4, n_images: int = 1000, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation(np.repeat(rng.choice(73_000, n_images, replace=False), 3))[: 750 * n_sessions]


def test_image_disjoint_94_4_2_over_training_sessions() -> None:
    images = _images()
    splits = split_trials(images, n_train_sessions=3)
    train_images = np.unique(images[:2250])
    by_split = {name: np.unique(images[splits[name]]) for name in ("train", "val1", "val2")}
    u = train_images.size
    assert [by_split[n].size for n in ("train", "val1", "val2")] == [
        int(0.94 * u),
        int(0.98 * u) - int(0.94 * u),
        u - int(0.98 * u),
    ]
    assert np.array_equal(np.sort(np.concatenate(list(by_split.values()))), train_images)
    for name, own in by_split.items():
        trials = splits[name]
        assert trials.dtype == np.int64 and np.all(np.diff(trials) > 0) and trials.max() < 2250
        # every training-session trial of the split's images is in the split
        assert np.array_equal(trials, np.flatnonzero(np.isin(images[:2250], own)))
    assert np.array_equal(splits["predict"], np.arange(2250, 3000))


def test_matches_the_reference_shuffle() -> None:
    images = _images()
    np.random.seed(114514)
    order = np.unique(images[:2250])
    np.random.shuffle(order)
    cut = int(np.floor(0.94 * order.size))
    splits = split_trials(images, n_train_sessions=3)
    assert np.array_equal(np.sort(np.unique(images[splits["train"]])), np.sort(order[:cut]))
    assert set(images[splits["val1"]]) == set(order[cut : int(np.floor(0.98 * order.size))])


def test_deterministic_and_independent_of_global_state() -> None:
    images = _images()
    np.random.seed(1)
    a = split_trials(images, 3)
    after = np.random.random_sample()
    np.random.seed(1)
    b = split_trials(images, 3)
    assert np.random.random_sample() == after  # the caller's RNG stream is untouched
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = split_trials(images, 3, seed=1)
    assert not np.array_equal(a["val1"], c["val1"])


def test_rejects_impossible_session_counts() -> None:
    with pytest.raises(ValueError, match="5 training sessions do not fit 3000 trials"):
        split_trials(_images(), 5)
