"""The memory-replay curve of `memq report`: how well each previous frame alone predicts the brain.

A job is a replay job when its params set ``EXPERIMENTAL.T_IMAGE`` and turn
``EXPERIMENTAL.USE_PREV_FRAME`` off: its model saw the frame T_IMAGE trial slots back and nothing
else (grids/replay.yaml). A grid with replay jobs gets the curve: x = T (0, -1, ...), y = each
job's best validation r (the ``val_pearson`` it recorded: the mean over voxels of val1 r at its
best epoch), one line per subject (``DATASET.SUBJECTS`` of the job) and their mean over the
subjects that have a value at that T. Jobs of the grid that set ``EXPERIMENTAL.T_IMAGE`` to 0 with
``USE_PREV_FRAME`` on saw every frame T=-32..0 at once: their r per subject, and the mean, are the
curve's reference level (the reference's "prev_current" runs; a dashed line). The reference's plot
(scripts_paper xdac) took the val2 r of each run's soup instead; its curve has the same x and meaning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from jobs.eval.formats import r_text

T_KEY, PREV_KEY, SUBJECTS_KEY = "EXPERIMENTAL.T_IMAGE", "EXPERIMENTAL.USE_PREV_FRAME", "DATASET.SUBJECTS"
ALL_SUBJECTS = "all subjects"  # the line of jobs without DATASET.SUBJECTS


def is_replay_job(job: Mapping[str, Any]) -> bool:
    params = job["params"]
    return T_KEY in params and params.get(PREV_KEY) is False


def _is_all_frames_job(job: Mapping[str, Any]) -> bool:
    params = job["params"]
    return params.get(T_KEY) == 0 and params.get(PREV_KEY, True) is True


def _subject(params: Mapping[str, Any]) -> str:
    names = params.get(SUBJECTS_KEY)
    return ",".join(map(str, names)) if names else ALL_SUBJECTS


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


@dataclass(frozen=True)
class ReplayCurve:
    frames: list[int]  # T, from 0 backwards
    subjects: dict[str, list[float | None]]  # subject -> r at each frame (None: no value recorded)
    all_frames: dict[str, float | None]  # subject -> r of its model of every frame, where the grid has one

    @property
    def mean(self) -> list[float | None]:
        """Per frame, the mean r of the subjects that have one."""
        return [_mean(column) for column in zip(*self.subjects.values(), strict=True)]

    @property
    def all_frames_mean(self) -> float | None:
        return _mean(self.all_frames.values())

    def as_json(self) -> dict[str, Any]:
        return {"frames": self.frames, "subjects": self.subjects, "mean": self.mean,
                "all_frames": self.all_frames, "all_frames_mean": self.all_frames_mean}  # fmt: skip


def replay_curve(jobs: Iterable[Mapping[str, Any]]) -> ReplayCurve | None:
    """The curve of the grid's replay jobs; None if it has none. A (subject, T) with several jobs
    (repeats) takes their mean."""
    values: dict[tuple[str, int], list[float | None]] = {}
    every: dict[str, list[float | None]] = {}
    for job in jobs:
        r = (job["metrics"] or {}).get("val_pearson")
        r = None if r is None else float(r)
        if is_replay_job(job):
            values.setdefault((_subject(job["params"]), int(job["params"][T_KEY])), []).append(r)
        elif _is_all_frames_job(job):
            every.setdefault(_subject(job["params"]), []).append(r)
    if not values:
        return None
    frames = sorted({t for _, t in values}, reverse=True)
    subjects = sorted({s for s, _ in values})
    table = {s: [_mean(values.get((s, t), [])) for t in frames] for s in subjects}
    return ReplayCurve(frames, table, {s: _mean(every[s]) for s in sorted(every)})


def replay_figure(curve: ReplayCurve) -> Figure:
    """One line per subject and their mean (thick), val r over the frame T."""
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    ax = figure.subplots()
    x = np.array(curve.frames)

    def y(values: list[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values])

    for subject, values in curve.subjects.items():
        ax.plot(x, y(values), marker="o", markersize=3, linewidth=1, alpha=0.7, label=subject)
    if len(curve.subjects) > 1:
        ax.plot(x, y(curve.mean), color="black", linewidth=3, label="mean over subjects")
    if curve.all_frames_mean is not None:
        label = f"every frame T=-32..0 at once ({len(curve.all_frames)} subjects' mean)"
        ax.axhline(curve.all_frames_mean, color="black", linestyle="--", linewidth=1.5, label=label)
    ax.set(
        xlabel="frame T (trial slots before the trial; the model saw this frame only)",
        ylabel="best val r (mean over voxels)",
        title="memory replay: prediction from one previous frame",
    )
    ax.set_xlim(x.max() + 0.5, x.min() - 0.5)  # T=0 on the left, as the reference draws it
    ax.yaxis.set_major_formatter(lambda value, _pos: r_text(value))
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.grid(alpha=0.3)
    figure.legend(loc="outside right upper", fontsize="small", frameon=False)
    return figure
