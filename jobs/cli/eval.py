"""`memq score` and `memq report`: the Algonauts 2023 score of a submission, and a grid's HTML report.

This module is imported at every `memq` start: it imports typer only; each command imports what it
needs. Bad inputs raise memq's UserError (one line, exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def _print_scores(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from jobs.eval.formats import count_text, score_text

    table = Table(title="Algonauts 2023 score", title_justify="left")
    for column in ("scores of", "vertices", "median", "mean"):
        table.add_column(column, justify="left" if column == "scores of" else "right")

    def row(name: str, entry: dict[str, Any], style: str | None = None) -> None:
        table.add_row(name, count_text(entry["n"]), score_text(entry["median"]), score_text(entry["mean"]), style=style)

    for subject, entry in result["subjects"].items():
        row(subject, entry["all"], "bold")
        row(f"  {subject} lh", entry["lh"])
        row(f"  {subject} rh", entry["rh"])
    for name, entry in result["rois"].items():
        row(f"ROI {name}", entry)
    row("all subjects", result["all"], "bold")
    Console().print(table)


def score(
    pred: Annotated[Path, typer.Argument(help="The submission: subjXX/lh_pred_test.npy, rh_pred_test.npy.")],
    truth: Annotated[Path, typer.Option("--truth", help="The test truth directory (jobs/data/TRUTH.md).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the scores as JSON.")] = False,
) -> None:
    """Algonauts 2023 noise-normalised score of a submission: per subject, hemisphere and stream ROI."""
    from jobs.eval.score import score_dirs, scores_json
    result = scores_json(score_dirs(pred, truth))
    if as_json:
        typer.echo(json.dumps(result, separators=(",", ":")))
    else:
        _print_scores(result)


def report(
    ctx: typer.Context,
    grid: Annotated[str, typer.Argument(help="Grid name (or its grid file).")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write index.html and its PNGs into.")],
    ensemble: Annotated[
        Path | None, typer.Option("--ensemble", help="The ensemble's output (submission, scores.json, ensemble.json).")
    ] = None,
    truth: Annotated[Path | None, typer.Option("--truth", help="Test truth (jobs/data/TRUTH.md): adds scores.")] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Prepared data for the surface map (default: the jobs' DATASET.DIR).")
    ] = None,
    root: Annotated[str | None, typer.Option("--root", help="The memq root (default: memq --root, MEMQ_ROOT).")] = None,
) -> None:
    """HTML report of a grid: validation curves, ensemble gain, with --truth the test score on the cortex; for
    a grid with the Mem README's ablation rows (grids/whole-brain.yaml) the ablation table, printed too."""
    from jobs.eval.ablation import table_rows, text_table
    from jobs.eval.report import ReportInputs, build_report
    from memq.job import grid_jobs

    memq_root, jobs = grid_jobs(ctx, grid, root)
    inputs = ReportInputs(jobs[0]["grid"], memq_root, jobs, out, ensemble=ensemble, truth=truth, data=data)
    path = build_report(inputs)
    ablation = table_rows(jobs)
    if ablation is not None:
        typer.echo(text_table(ablation))
    typer.echo(f"wrote {path}")
