"""The report's matplotlib figures (object-oriented API: no pyplot state, PNG through Agg)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

MAX_LEGEND = 12  # lines per panel that still get a legend


@dataclass(frozen=True)
class Curve:
    label: str
    epochs: np.ndarray
    values: np.ndarray


def save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, format="png", dpi=100, bbox_inches="tight")
    return path


def curves_figure(groups: Mapping[str, Sequence[Curve]]) -> Figure:
    """One panel per group: each job's validation r per epoch."""
    ncols = min(4, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    figure = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (group, curves) in zip(axes, groups.items(), strict=False):
        for curve in curves:
            ax.plot(curve.epochs, curve.values, marker="o", markersize=3, label=curve.label)
        ax.set(title=f"group {group}", xlabel="epoch", ylabel="val r (mean over voxels)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(curves) <= MAX_LEGEND:
            ax.legend(fontsize="x-small")
    for ax in axes[len(groups) :]:
        ax.set_axis_off()
    return figure


def schemes_figure(per_scheme: Mapping[str, float], cumulative: Sequence[tuple[str, float]]) -> Figure:
    """Left: mean val r of each scheme alone. Right: the ensemble's as schemes are added in order."""
    figure = Figure(figsize=(11, 3.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    names = list(per_scheme)
    left.bar(names, [per_scheme[n] for n in names], color="tab:blue")
    left.set(title="each scheme alone", ylabel="val2 r (mean over voxels)")
    left.tick_params(axis="x", rotation=60)
    if cumulative:
        added, means = zip(*cumulative, strict=True)
        x = np.arange(1, len(means) + 1)
        right.plot(x, means, marker="o", color="tab:green", label="ensemble")
        right.set_xticks(x, [f"+{name}" for name in added], rotation=60)
        if per_scheme:
            right.axhline(max(per_scheme.values()), linestyle="--", color="tab:blue", label="best single scheme")
        right.legend(fontsize="small")
    right.set(title="ensemble as schemes are added", ylabel="val2 r (mean over voxels)")
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    return figure


def score_figure(result: Mapping[str, Any]) -> Figure:
    """Median and mean test score per subject and over all vertices; per stream ROI where labelled.
    ``result`` is :func:`jobs.eval.score.scores_json`."""
    rois = result["rois"]
    figure = Figure(figsize=(11 if rois else 6, 3.8), layout="constrained")
    axes = figure.subplots(1, 2 if rois else 1, squeeze=False).ravel()
    subjects = {name: entry["all"] for name, entry in result["subjects"].items()} | {"all": result["all"]}
    panels = [("per subject", subjects), ("per stream ROI", rois)]
    for ax, (title, entries) in zip(axes, panels, strict=False):
        names = list(entries)
        x = np.arange(len(names))
        for offset, stat in ((-0.2, "median"), (0.2, "mean")):
            values = [entries[name][stat] or 0.0 for name in names]
            ax.bar(x + offset, values, width=0.4, label=stat)
        ax.set_xticks(x, names, rotation=45 if len(names) > 4 else 0)
        ax.set(title=title, ylabel="noise-normalised score (%)", ylim=(0, 118), yticks=range(0, 101, 20))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small", ncols=2, loc="upper right")
    return figure
