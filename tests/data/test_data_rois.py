from __future__ import annotations

import itertools

import numpy as np
import pytest

from jobs.data.rois import random_rois


def _literal_reference(n: int) -> dict[str, list[int]]:
    """The procedure of mem-spec 1.8, written out with an explicit legacy RandomState."""
    rng = np.random.RandomState(45510)
    buffer = np.arange(n)
    out = {}
    for j in range(1, 11):
        rng.shuffle(buffer)
        for i, chunk in enumerate(np.array_split(buffer, 9), start=1):
            out[f"r_{j}_{i}"] = chunk.tolist()
    return out


@pytest.mark.parametrize("n", [20, 9, 1000, 40_001])
def test_equals_the_literal_procedure(n: int) -> None:
    rois = random_rois(n)
    expected = _literal_reference(n)
    assert list(rois) == list(expected)  # r_1_1 .. r_1_9, r_2_1 .. r_10_9
    for name, positions in rois.items():
        assert positions.dtype == np.int64
        assert positions.tolist() == expected[name], name


def test_pinned_values() -> None:
    rois = random_rois(20)
    assert rois["r_1_1"].tolist() == [7, 9, 19]
    assert rois["r_1_9"].tolist() == [4, 16]
    assert rois["r_2_1"].tolist() == [10, 18, 16]


def test_each_atlas_partitions_and_atlases_differ() -> None:
    n = 1003
    rois = random_rois(n)
    atlases = []
    for j in range(1, 11):
        chunks = [rois[f"r_{j}_{i}"] for i in range(1, 10)]
        assert [len(c) for c in chunks] == [112] * 4 + [111] * 5  # n mod 9 = 4 chunks get one more
        assert np.array_equal(np.sort(np.concatenate(chunks)), np.arange(n))
        atlases.append(np.concatenate(chunks))
    for a, b in itertools.pairwise(atlases):
        assert not np.array_equal(a, b)
    assert not np.array_equal(np.sort(rois["r_1_1"]), np.sort(rois["r_2_1"]))


def test_chunks_are_copies_and_global_rng_is_untouched() -> None:
    np.random.seed(7)
    expected_next = np.random.RandomState(7).random_sample()
    rois = random_rois(50)
    assert np.random.random_sample() == expected_next
    assert all(r.base is None for r in rois.values())


def test_other_sizes() -> None:
    rois = random_rois(30, n_atlases=2, n_rois=3, seed=1)
    assert sorted(rois) == ["r_1_1", "r_1_2", "r_1_3", "r_2_1", "r_2_2", "r_2_3"]
