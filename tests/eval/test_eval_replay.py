"""The replay curve of `memq report` from a grid's job rows: which jobs are on it, and its values."""

from __future__ import annotations

from typing import Any

import numpy as np

from jobs.eval.replay import replay_curve


def _job(
    r: float | None, subject: str, t: int | None = None, prev: bool | None = None, shuffle: bool = False
) -> dict[str, Any]:
    params: dict[str, Any] = {"DATASET.SUBJECTS": [subject]}
    if shuffle:
        params["EXPERIMENTAL.SHUFFLE_IMAGES"] = True
    if t is not None:
        params["EXPERIMENTAL.T_IMAGE"] = t
    if prev is not None:
        params["ABLATION.MEMORY_IMAGES"] = prev
    return {"params": params, "metrics": None if r is None else {"val_pearson": r}}


def test_frames_subjects_repeats_and_the_all_frames_level() -> None:
    jobs = [
        _job(0.30, "subj01", 0, False),
        _job(0.10, "subj01", -2, False),
        _job(0.14, "subj01", -2, False),  # a repeat: the mean
        _job(0.20, "subj02", 0, False),
        _job(None, "subj02", -2, False),  # not done yet: no value
        _job(0.40, "subj01", 0, True),  # every frame
        _job(0.35, "subj02", 0, True),
        _job(0.50, "subj01", -2, True),  # neither: T=-2 with the other frames
        _job(0.02, "subj01", 0, True, shuffle=True),  # other trials' frames
        _job(0.04, "subj01", 0, True, shuffle=True),
        _job(0.90, "subj01"),  # an ordinary model
    ]
    curve = replay_curve(jobs)
    assert curve is not None and curve.frames == [0, -2]
    assert sorted(curve.subjects) == ["subj01", "subj02"] and curve.subjects["subj02"] == [0.20, None]
    np.testing.assert_allclose(curve.subjects["subj01"], [0.30, (0.10 + 0.14) / 2])
    np.testing.assert_allclose(curve.mean, [(0.30 + 0.20) / 2, (0.10 + 0.14) / 2])
    assert curve.all_frames == {"subj01": 0.40, "subj02": 0.35}
    assert curve.shuffled.keys() == {"subj01"}
    np.testing.assert_allclose(curve.shuffled["subj01"], (0.02 + 0.04) / 2)
    summary = curve.as_json()
    np.testing.assert_allclose([summary["all_frames_mean"], summary["shuffled_mean"]], [(0.40 + 0.35) / 2, 0.03])


def test_a_grid_without_frame_models_has_no_curve() -> None:
    assert replay_curve([_job(0.3, "subj01"), _job(0.4, "subj01", 0, True)]) is None
