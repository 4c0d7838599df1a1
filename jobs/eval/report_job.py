"""Job kind ``eval.report``: `memq report` as the last step of a pipeline grid.

Params: ``out`` (the report's directory), ``ensemble`` (a combine job's output), ``truth`` (test
truth, jobs/data/TRUTH.md), ``data``; ``grid`` defaults to the job's own. The report covers the
grid's trained models (mem.train and mem.import jobs), not its data, soup or prediction jobs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jobs.eval.ablation import table_rows, text_table
from jobs.eval.report import ReportInputs, build_report
from jobs.kinds import TRAINED_KINDS
from memq.job import JobContext, PermanentError

REQUIRED, OPTIONAL = {"out"}, {"grid", "ensemble", "truth", "data"}


def validate_report(params: Mapping[str, Any], root: Path | None = None) -> None:
    missing = sorted(REQUIRED - params.keys())
    if missing:
        raise ValueError(f"missing parameter {', '.join(missing)}")
    unknown = sorted(params.keys() - REQUIRED - OPTIONAL)
    if unknown:
        known = ", ".join(sorted(REQUIRED | OPTIONAL))
        raise ValueError(f"{unknown[0]}: unknown parameter (eval.report takes {known})")


def run(ctx: JobContext) -> None:
    p = ctx.params
    grid = p.get("grid") or ctx.grid
    trained = [job for job in ctx.jobs(grid=grid) if job["kind"] in TRAINED_KINDS]
    if not trained:
        raise PermanentError(f"grid {grid!r} has no mem.train or mem.import jobs to report on")

    def path(key: str) -> Path | None:
        return Path(p[key]) if p.get(key) else None

    inputs = ReportInputs(grid, ctx.root, trained, Path(p["out"]), ensemble=path("ensemble"), truth=path("truth"),
                          data=path("data"))
    path = build_report(inputs)
    ablation = table_rows(trained)
    if ablation is not None:
        print(text_table(ablation), flush=True)
    print(f"wrote {path}", flush=True)
