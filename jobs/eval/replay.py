"""The memory-replay curve of `memq report`: how well each previous frame alone predicts the brain.

A job is a replay job when its params set ``EXPERIMENTAL.T_IMAGE`` and turn
``ABLATION.MEMORY_IMAGES`` off: its model saw the frame T_IMAGE trial slots back and nothing
else (grids/replay.yaml). A grid with replay jobs gets the curve: x = T (0, -1, ...), y = each
job's best validation r (the ``val_pearson`` it recorded: the mean over voxels of val1 r at its
best epoch), one line per subject (``DATASET.SUBJECTS`` of the job) and their mean over the
subjects that have a value at that T. Jobs of the grid that set ``EXPERIMENTAL.T_IMAGE`` to 0 with
``ABLATION.MEMORY_IMAGES`` on saw every frame T=-32..0 at once: their r per subject, and the mean, are the
curve's upper reference level (the reference's "prev_current" runs; a dashed line); those that also
set ``EXPERIMENTAL.SHUFFLE_IMAGES`` saw other trials' frames, the chance level ("rand"; dotted).
The reference's plot (scripts_paper xdac) took the val2 r of each run's soup instead; its curve
has the same x and meaning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from jobs.eval.formats import r_text

T_KEY, PREV_KEY, SUBJECTS_KEY = "EXPERIMENTAL.T_IMAGE", "ABLATION.MEMORY_IMAGES", "DATASET.SUBJECTS"
SHUFFLE_KEY = "EXPERIMENTAL.SHUFFLE_IMAGES"
ALL_SUBJECTS = "all subjects"  # the line of jobs without DATASET.SUBJECTS


def is_replay_job(job: Mapping[str, Any]) -> bool:
    params = job["params"]
    return T_KEY in params and params.get(PREV_KEY) is False


def _level(job: Mapping[str, Any]) -> str | None:
    """"all_frames" or "shuffled" for the jobs of the curve's reference levels, else None."""
    params = job["params"]
    if params.get(T_KEY) != 0 or params.get(PREV_KEY, True) is not True:
        return None
    return "shuffled" if params.get(SHUFFLE_KEY) is True else "all_frames"


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
    shuffled: dict[str, float | None]  # subject -> r of that model given other trials' frames

    @property
    def mean(self) -> list[float | None]:
        """Per frame, the mean r of the subjects that have one."""
        return [_mean(column) for column in zip(*self.subjects.values(), strict=True)]

    def as_json(self) -> dict[str, Any]:
        levels = {"all_frames": self.all_frames, "shuffled": self.shuffled}
        return {"frames": self.frames, "subjects": self.subjects, "mean": self.mean, **levels,
                **{f"{name}_mean": _mean(level.values()) for name, level in levels.items()}}  # fmt: skip


def replay_curve(jobs: Iterable[Mapping[str, Any]]) -> ReplayCurve | None:
    """The curve of the grid's replay jobs; None if it has none. A (subject, T) with several jobs
    (repeats) takes their mean."""
    values: dict[tuple[str, int], list[float | None]] = {}
    levels: dict[str, dict[str, list[float | None]]] = {"all_frames": {}, "shuffled": {}}
    for job in jobs:
        r = (job["metrics"] or {}).get("val_pearson")
        r = None if r is None else float(r)
        if is_replay_job(job):
            values.setdefault((_subject(job["params"]), int(job["params"][T_KEY])), []).append(r)
        elif (level := _level(job)) is not None:
            levels[level].setdefault(_subject(job["params"]), []).append(r)
    if not values:
        return None
    frames = sorted({t for _, t in values}, reverse=True)
    subjects = sorted({s for s, _ in values})
    table = {s: [_mean(values.get((s, t), [])) for t in frames] for s in subjects}
    every, shuffled = ({s: _mean(rs) for s, rs in sorted(levels[name].items())} for name in ("all_frames", "shuffled"))
    return ReplayCurve(frames, table, every, shuffled)


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
    for level, style, what in ((curve.all_frames, "--", "every frame T=-32..0 at once"),
                               (curve.shuffled, ":", "other trials' frames (shuffled)")):  # fmt: skip
        mean = _mean(level.values())
        if mean is not None:
            label = f"{what} ({len(level)} subjects' mean)"
            ax.axhline(mean, color="black", linestyle=style, linewidth=1.5, label=label)
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
