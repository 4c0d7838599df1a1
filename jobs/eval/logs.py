"""Validation curves from the Lightning CSV logs that ``mem.train`` writes into each attempt's directory.

Lightning's CSVLogger writes ``<root>/jobs/<grid>/<id>/attempt-<k>/logs/<version>/metrics.csv``: a
header of every metric name, then one row per logging step with empty cells for the metrics that
step did not log. A job resumed in a later attempt continues its epochs there, so a curve joins the
attempts in order; an epoch logged again by a later attempt takes the later value.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from memq.job import job_dir

VAL_COLUMN = "VAL/PearsonCorrCoef/mean"  # jobs.mem.train.lit.VAL_METRIC (not imported: that module imports torch)


def _read_column(path: Path, column: str) -> list[tuple[int, float]]:
    """(epoch, value) of the rows of one metrics.csv that hold ``column``; epochs count those rows
    where the file has no ``epoch`` column."""
    points = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                value = float(row.get(column) or "nan")
                epoch = int(float(row.get("epoch") or len(points)))
            except ValueError:
                continue
            if np.isfinite(value):
                points.append((epoch, value))
    return points


def val_curve(root: Path, grid: str, job_id: int, attempts: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Epochs and validation r of a job over its attempts 1..``attempts``; None without any logged value."""
    by_epoch: dict[int, float] = {}
    for attempt in range(1, attempts + 1):
        for path in sorted(job_dir(root, grid, job_id, attempt).glob("logs/*/metrics.csv")):
            by_epoch.update(_read_column(path, VAL_COLUMN))
    if not by_epoch:
        return None
    epochs = np.array(sorted(by_epoch))
    return epochs, np.array([by_epoch[e] for e in epochs])
