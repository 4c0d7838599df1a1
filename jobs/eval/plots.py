"""The report's matplotlib figures (object-oriented API: no pyplot state, PNG through Agg).

Bars show differences to a stated baseline (the best single scheme; the score over all vertices),
so that small differences between schemes, subjects or ROIs stay visible; the page's tables hold the
values themselves. Panels read side by side share one y-range. Legends sit below their panel, clear
of the lines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator
from matplotlib.transforms import offset_copy

from jobs.eval.formats import r_change_text, r_text, score_change_text, score_text

MAX_LEGEND = 10  # lines per panel that still get a legend: the default colour cycle has 10 colours
BELOW_AXIS_PT = 34  # from the bottom of a panel to below its x tick labels and x label


@dataclass(frozen=True)
class Curve:
    label: str
    epochs: np.ndarray
    values: np.ndarray


def save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, format="png", dpi=100, bbox_inches="tight")
    return path


def _y_ticks(ax: Axes, text: Callable[[float], str]) -> None:
    """Tick labels in the page's format for the quantity."""
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: text(value)))


def _legend_below(ax: Axes, n_lines: int) -> None:
    """The panel's legend under its x label; past MAX_LEGEND lines (colours repeat) a note instead."""
    below = offset_copy(ax.transAxes, fig=ax.figure, y=-BELOW_AXIS_PT, units="points")
    if n_lines <= MAX_LEGEND:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=below, ncols=2,
                  fontsize="x-small", frameon=False)  # fmt: skip
    else:
        note = f"{n_lines} jobs: too many lines for a legend (the Jobs table lists them)"
        ax.text(0.5, 0, note, transform=below, ha="center", va="top", fontsize="x-small")


def curves_figure(groups: Mapping[str, Sequence[Curve]]) -> Figure:
    """One panel per group, all on one y-range: each job's validation r per epoch."""
    ncols = min(4, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    figure = Figure(figsize=(4.2 * ncols, 3.8 * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False, sharey=True)
    for ax, (group, curves) in zip(axes.ravel(), groups.items(), strict=False):
        for curve in curves:
            ax.plot(curve.epochs, curve.values, marker="o", markersize=3, label=curve.label)
        ax.set(title=f"group {group}", xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _y_ticks(ax, r_text)
        ax.grid(alpha=0.3)
        _legend_below(ax, len(curves))
    for ax in axes[:, 0]:
        ax.set_ylabel("val r (mean over voxels)")
    for ax in axes.ravel()[len(groups) :]:
        ax.set_axis_off()
    return figure


def schemes_figure(per_scheme: Mapping[str, float], cumulative: Sequence[tuple[str, float]]) -> Figure:
    """Left: each scheme alone. Right: the ensemble as schemes are added in order. Both as val2 r
    minus the best single scheme's, on one y-range. ``per_scheme`` must not be empty."""
    best = max(per_scheme, key=per_scheme.__getitem__)
    base = per_scheme[best]
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2, sharey=True)
    names = list(per_scheme)
    left.bar(names, [per_scheme[n] - base for n in names], color="tab:blue")
    left.set(title="each scheme alone", ylabel="val2 r − best single scheme's")
    left.tick_params(axis="x", rotation=60)
    if cumulative:
        added, means = zip(*cumulative, strict=True)
        x = np.arange(1, len(means) + 1)
        right.plot(x, np.asarray(means) - base, marker="o", color="tab:green")
        right.set_xticks(x, [f"+{name}" for name in added], rotation=60)
    right.set(title="ensemble as schemes are added")
    for ax in (left, right):
        ax.axhline(0, color="0.3", linewidth=0.8)
        _y_ticks(ax, r_change_text)
        ax.grid(axis="y", alpha=0.3)
    figure.suptitle(f"val2 r relative to the best single scheme, {best} (r = {r_text(base)})")
    return figure


def _difference(value: float | None, base: float | None) -> float:
    return math.nan if value is None or base is None else value - base


def score_figure(result: Mapping[str, Any]) -> Figure:
    """Median and mean test score per subject and per stream ROI (where labelled), as differences to
    the score over all vertices of all subjects, on one y-range. ``result`` is
    :func:`jobs.eval.score.scores_json`."""
    overall, rois = result["all"], result["rois"]
    panels = [("per subject", {name: entry["all"] for name, entry in result["subjects"].items()})]
    panels += [("per stream ROI", rois)] if rois else []
    figure = Figure(figsize=(11 if rois else 6, 4.4), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False, sharey=True).ravel()
    for ax, (title, entries) in zip(axes, panels, strict=True):
        names = list(entries)
        x = np.arange(len(names))
        for offset, stat in ((-0.2, "median"), (0.2, "mean")):
            values = [_difference(entries[name][stat], overall[stat]) for name in names]
            ax.bar(x + offset, values, width=0.4, label=stat)
        ax.set_xticks(x, names, rotation=45 if len(names) > 4 else 0)
        ax.set_title(title)
        ax.axhline(0, color="0.3", linewidth=0.8)
        _y_ticks(ax, score_change_text)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("score − all vertices' (percentage points)")
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize="small")
    figure.suptitle(
        f"test score relative to all vertices of all subjects: median {score_text(overall['median'])}, "
        f"mean {score_text(overall['mean'])}"
    )
    return figure
