"""`memq soup` and `memq ensemble`: derive, enqueue and wait for the jobs of a grid's `ensemble:` section."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from memq.cli.common import count, store

if TYPE_CHECKING:
    from memq.coordinator import Plan
    from memq.follow import Counts
    from memq.store.store import Store

GridArg = Annotated[str, typer.Argument(help="The grid file (or the name of a grid submitted from one).",
                                        show_default=False)]
RecipeOpt = Annotated[str | None, typer.Option(
    help="uniform or greedy (default: the section's soup params, else uniform).")]
PartialOpt = Annotated[bool, typer.Option("--partial", help="Use the grid's succeeded jobs even if others are not.")]
WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the jobs succeeded (or one failed).")]
PollOpt = Annotated[float, typer.Option(help="Seconds between looks at the queue while waiting.")]


def _line(counts: Counts) -> str:
    parts = []
    for stage, by_state in counts.items():
        total = sum(by_state.values())
        busy = ", ".join(f"{n} {state}" for state, n in by_state.items() if n and state != "succeeded")
        parts.append(f"{stage} {by_state['succeeded']}/{total}" + (f" ({busy})" if busy else ""))
    return "; ".join(parts)


class _View:
    """A live progress bar per stage on a terminal; a plain line per change otherwise."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=self.console,
                                 disable=not self.console.is_terminal)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _View:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, counts: Counts) -> None:
        if not self.console.is_terminal:
            typer.echo(_line(counts), err=True)
            return
        for stage, by_state in counts.items():
            detail = " ".join(f"{n} {state}" for state, n in by_state.items() if n and state != "succeeded")
            if stage not in self.tasks:
                self.tasks[stage] = self.progress.add_task(stage, total=sum(by_state.values()), detail="")
            self.progress.update(self.tasks[stage], completed=by_state["succeeded"], detail=detail)


def _plan(st: Store, grid: str, recipe: str | None, partial: bool, out: Path | None = None) -> tuple[Plan, str]:
    """The derived jobs for a grid (soups only, or with ``out`` the whole ensemble), and the recipe."""
    from memq.coordinator import load_section, plan, resolve_recipe, trained_jobs

    section = load_section(st, grid)
    chosen = resolve_recipe(section, recipe)
    trained = trained_jobs(st, section.grid.name, partial=partial)
    return plan(section, trained, recipe=chosen, out=out, partial=partial), chosen


def _run(st: Store, planned: Plan, wait: bool, poll: float) -> list[dict[str, Any]] | None:
    from memq.coordinator import submit
    from memq.follow import JobsFailed
    from memq.follow import wait as wait_for

    done = submit(st, planned)
    typer.echo(f"{planned.spec.name}: {count(len(planned.stages), 'job')}, {done.added} added")
    if done.requeued:
        typer.echo(f"requeued {count(len(done.requeued), 'job')} that had failed or been cancelled")
    if done.superseded:
        typer.echo(f"cancelled combine jobs {', '.join(map(str, done.superseded))} (same --out, other jobs)")
    if not wait:
        return None
    try:
        with _View() as view:
            return wait_for(st, planned.spec.name, planned.stages, view.update, interval=poll)
    except JobsFailed as failed:
        for row in failed.rows:
            typer.echo(f"error: job {row['id']} ({row['group']}, {row['kind']}) {row['state']}: "
                       f"{row['reason'] or 'no reason recorded'} (see `memq logs {row['id']}`)", err=True)
        sys.exit(1)


def soup(
    ctx: typer.Context,
    grid: GridArg,
    recipe: RecipeOpt = None,
    partial: PartialOpt = False,
    wait: WaitOpt = True,
    poll: PollOpt = 2.0,
) -> None:
    """Soup every trained job of a grid: sync its checkpoints, then average them (uniform or greedy)."""
    from memq.checkpoints import SOUP_ARTIFACT

    st = store(ctx)
    planned, chosen = _plan(st, grid, recipe, partial)
    rows = _run(st, planned, wait, poll)
    if rows is not None:
        sources = {row["params"]["source_job"]: row for row in rows}
        soups = [a for a in st.checkpoints(job_ids=sources, kind=SOUP_ARTIFACT) if a["path"].endswith(f"/{chosen}.pt")]
        for artifact in soups:
            metrics = sources[artifact["job_id"]]["metrics"] or {}
            score = f"  val2 r {metrics['val2_pearson']:.4f}" if "val2_pearson" in metrics else ""
            typer.echo(f"job {artifact['job_id']}: {artifact['path']}{score}")
        typer.echo(f"{len(rows)} {chosen} soups ready")


def ensemble(
    ctx: typer.Context,
    grid: GridArg,
    out: Annotated[Path, typer.Option(
        "--out", help="Output directory, on the shared filesystem (the combine job writes it).")],
    recipe: RecipeOpt = None,
    partial: PartialOpt = False,
    wait: WaitOpt = True,
    poll: PollOpt = 2.0,
) -> None:
    """Sync, soup, predict, stitch and average a trained grid into an Algonauts submission with val2 scores."""
    from memq.coordinator import COMBINE

    st = store(ctx)
    planned, _ = _plan(st, grid, recipe, partial, out.expanduser().absolute())
    rows = _run(st, planned, wait, poll)
    if rows is not None:
        combine = next(row for row in rows if planned.stages[row["key"]] == COMBINE)
        metrics = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in (combine["metrics"] or {}).items())
        typer.echo(f"ensemble written to {out} (job {combine['id']}{': ' + metrics if metrics else ''})")


def register(app: typer.Typer) -> None:
    app.command()(soup)
    app.command()(ensemble)
