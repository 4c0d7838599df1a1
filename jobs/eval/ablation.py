"""The ablation table: each group's measured row next to the README's row (jobs/eval/paper.py).

Measured: the val2 r of the greedy soup of each job of the group (metric ``soup_val2``, written by
``mem.train`` with ``soup_score``), mean and standard deviation over the group's succeeded jobs,
as the reference's xdcad_ablation_table.py averages its runs per row. Groups map to the paper's
rows by name; groups that are no row of the paper (xdcac's module ablations, xdea's) follow with
the paper's cells empty. Differences are to the ``full`` row on both sides: the paper's levels
are 8-subject challenge-test scores, ours one subject's val2 r.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jobs.eval.formats import NONE, count_text, r_change_text, r_text
from jobs.eval.paper import PAPER_ROWS, SOURCE, PaperRow

METRIC = "soup_val2"
FULL = "full"
HEADER = ["row", "group", "frames", "M", "B", "T", "paper r", "paper r2", "paper score", "paper vs full",
          "val2 r", "sd", "runs", "val2 r vs full"]  # fmt: skip


NOTE = (f"paper: {SOURCE} (r, r2 private, score public; 'paper vs full' in points, as published). "
        f"measured: mean val2 r of each run's greedy soup ({METRIC}), sd over runs.")


@dataclass(frozen=True)
class Measured:
    mean: float
    sd: float | None  # None for a single run
    runs: int


def measured_by_group(jobs: Sequence[dict[str, Any]]) -> dict[str, Measured]:
    """Per group, the mean and sample standard deviation of its succeeded jobs' ``soup_val2``."""
    values: dict[str, list[float]] = defaultdict(list)
    for job in jobs:
        value = (job.get("metrics") or {}).get(METRIC)
        if job["state"] == "succeeded" and value is not None:
            values[job["group"]].append(float(value))
    return {
        group: Measured(statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None, len(v))
        for group, v in values.items()
    }


def _flag(on: bool) -> str:
    return "yes" if on else "no"


def table_rows(jobs: Sequence[dict[str, Any]]) -> list[list[str]] | None:
    """The table's rows (formatted cells, HEADER's columns); None if the grid has no ablation group."""
    groups = list(dict.fromkeys(job["group"] for job in jobs))
    measured = measured_by_group(jobs)
    paper_groups = {row.group for row in PAPER_ROWS}
    if not (paper_groups & set(groups)):
        return None
    full_paper = next(row for row in PAPER_ROWS if row.group == FULL)
    full = measured.get(FULL)
    rows = []

    def our_cells(group: str | None) -> list[str]:
        m = measured.get(group) if group else None
        if m is None:
            return [NONE, NONE, count_text(0) if group in groups else NONE, NONE]
        change = None if full is None or group == FULL else m.mean - full.mean
        return [r_text(m.mean), r_text(m.sd), count_text(m.runs), r_change_text(change)]

    for paper in PAPER_ROWS:
        change = None if paper is full_paper or paper.ensemble else paper.score - full_paper.score
        rows.append([paper.label, paper.group or NONE, *_inputs(paper), f"{paper.r:.3f}", f"{paper.r2:.3f}",
                     f"{paper.score:.2f}", NONE if change is None else f"{change:+.2f}",
                     *our_cells(paper.group)])  # fmt: skip
    for group in groups:
        if group in measured and group not in paper_groups:
            rows.append([f"({group})", group, NONE, NONE, NONE, NONE, NONE, NONE, NONE, NONE, *our_cells(group)])
    return rows


def _inputs(row: PaperRow) -> list[str]:
    return [row.frames, _flag(row.memory), _flag(row.answer), _flag(row.time)]


def text_table(rows: list[list[str]]) -> str:
    """The table as aligned text, with a line naming the paper's source."""
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]

    def line(cells: list[str]) -> str:
        padded = zip(cells, widths, strict=True)
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(padded)).rstrip()

    return "\n".join([line(HEADER), *map(line, rows), NOTE])
