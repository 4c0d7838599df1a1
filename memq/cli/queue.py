"""Queue commands: submit, status, jobs, cancel, retry, pause, resume."""

from __future__ import annotations

import atexit
import gc
import math
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from memq.cli.common import count, options, parse_ids, print_json, printable, store

MIN_INTERVAL = 0.1  # seconds between refreshes of `memq status --watch`: each one reads the store


def submit(
    ctx: typer.Context,
    grid_file: Annotated[Path, typer.Argument(help="The grid YAML file.", show_default=False)],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the expanded jobs; write nothing.")] = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="KEY=VALUE added to every job's params (e.g. DATASET.DIR=/data/prepared).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Expand and validate the file even if it is unchanged since the grid's last submit.")] = False,
) -> None:
    """Expand a grid file into jobs and enqueue the ones not already queued (idempotent).

    A file unchanged since the grid's last submit (same bytes, same --set values, same installed
    packages) with all its jobs still queued is not expanded again, so its kinds' validators do not
    run again either; --force expands and validates it anyway."""
    # A grid of 100,000 jobs builds ~500,000 objects and exits: without the cyclic collector's passes
    # over them (reference counting frees what is dropped) and its last pass at exit, 0.3 s sooner.
    gc.disable()
    atexit.register(gc.freeze)
    from memq.cli.lean import fingerprint

    digest = fingerprint(grid_file, set_ or []) if grid_file.is_file() else None
    if digest and not (force or dry_run) and _unchanged(ctx, digest, as_json):
        return
    from memq.grid import load_grid
    from memq.overrides import parse_overrides

    given = options(ctx)
    # kinds check their params against the root too (installed weights); a dry run may have none
    root = given.resolve_root() if not dry_run or given.root or os.environ.get("MEMQ_ROOT") else None
    spec = load_grid(grid_file, parse_overrides(set_ or []), root)
    for warning in spec.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if dry_run:
        _print_expanded(spec, as_json)
        return
    result = store(ctx, create=True).submit(spec, digest)
    if as_json:
        print_json({"grid": result.grid, "added": result.added, "existing": result.existing, "edited": result.edited,
                    "unchanged": False})
        return
    typer.echo(f"{result.grid}: {count(result.added, 'job')} added, {result.existing} already queued")
    if result.edited:
        verb = "differs" if result.edited == 1 else "differ"
        typer.echo(f"note: {count(result.edited, 'queued job')} {verb} from the file (command, resources, priority "
                   "or attempts); they keep what they were submitted with. Cancel and resubmit to change them.")


def _unchanged(ctx: typer.Context, digest: str, as_json: bool) -> bool:
    """Say so and return True if the grid was last submitted with this fingerprint and still has
    all its jobs (memq.cli.lean answers this first where it can read the store itself)."""
    from memq.cli.lean import print_unchanged
    from memq.errors import UserError

    try:
        found = store(ctx).unchanged(digest)
    except UserError:  # no queue here yet
        return False
    if found is not None:
        print_unchanged(found, as_json)
    return found is not None


def _print_expanded(spec, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    rows = [{"key": j.key, "group": j.group, "kind": j.kind, "repeat": j.repeat, "params": j.params,
             "gpus": j.gpus or j.gpu_share, "gpu_mem_gb": j.gpu_mem_gb, "priority": j.priority,
             "max_attempts": j.max_attempts, "command": j.command}
            for j in spec.jobs]
    if as_json:
        print_json({"grid": spec.name, "jobs": rows})
        return
    from rich.console import Console
    from rich.table import Table

    # Parameters every job shares would repeat on every row: show them once, above the table.
    shared = {k: v for k, v in rows[0]["params"].items() if all(r["params"].get(k, object()) == v for r in rows)}
    console = Console(markup=False)  # (no [markup] in what the file says)
    if shared and len(rows) > 1:
        console.print(f"{len(shared)} parameters shared by every job: "
                      + printable(" ".join(f"{k}={v}" for k, v in shared.items())), soft_wrap=True)
    table = Table(title=f"{spec.name}: {count(len(rows), 'job')} (dry run, nothing written)", title_justify="left")
    for col in ("#", "group", "kind", "rep", "gpus", "params", "key"):
        table.add_column(col)
    for i, r in enumerate(rows):
        params = " ".join(f"{k}={v}" for k, v in r["params"].items() if k not in shared or len(rows) == 1)
        table.add_row(str(i), r["group"], r["kind"], str(r["repeat"]), f"{r['gpus']:.4g}", printable(params),
                      r["key"][:12])
    console.print(table)


def status(
    ctx: typer.Context,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until interrupted.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch (at least 0.1).")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Grids with progress and state counts, workers with their jobs, recent failures."""
    from memq.dashboard import render, snapshot
    from memq.errors import UserError

    if not (math.isfinite(interval) and interval >= MIN_INTERVAL):
        raise UserError(f"must be a finite number of seconds, at least {MIN_INTERVAL:g}; got {interval:g}",
                        where="--interval")

    st = store(ctx)
    if as_json or not watch:
        from memq.cli.lean import print_status

        print_status(snapshot(st), as_json)
        return
    from rich.console import Console
    from rich.live import Live

    # What workers and jobs wrote (names, reasons, progress) is shown as text: no [markup], no escapes.
    console = Console(markup=False)
    with Live(render(printable(snapshot(st))), console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(render(printable(snapshot(st))))
        except KeyboardInterrupt:
            pass


def jobs(
    ctx: typer.Context,
    grid: Annotated[str | None, typer.Option(help="Only this grid.")] = None,
    group: Annotated[str | None, typer.Option(help="Only this group.")] = None,
    state: Annotated[list[str] | None, typer.Option(help="Only these states (repeatable).")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many (newest first).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List jobs with their state, attempt and metrics."""
    from memq.errors import UserError
    from memq.store.schema import STATES

    for s in state or []:
        if s not in STATES:
            raise UserError(f"unknown state {s!r}", where="--state", hint=", ".join(STATES))
    rows = store(ctx).jobs(grid=grid, group=group, states=state or (), limit=limit, newest_first=limit is not None)
    if as_json:
        keep = ("id", "key", "grid", "group", "kind", "params", "repeat", "state", "attempt", "failures",
                "crashes", "reason", "exit_code", "metrics", "progress", "submitted_at", "started_at", "finished_at")
        print_json([{k: r[k] for k in keep} for r in rows])
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from memq.dashboard import STATE_STYLES

    table = Table()
    for col in ("id", "grid", "group", "state", "att", "params", "metrics / reason"):
        table.add_column(col)
    for r in rows:
        params = " ".join(f"{k}={v}" for k, v in r["params"].items())
        metrics = r["metrics"] or {}
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        table.add_row(str(r["id"]), r["grid"], r["group"], Text(r["state"], style=STATE_STYLES[r["state"]]),
                      str(r["attempt"]), printable(params)[:60], printable(extra or (r["reason"] or "")))
    Console(markup=False).print(table)  # (what jobs wrote is text, not [markup])


def cancel(
    ctx: typer.Context,
    job_ids: Annotated[list[str] | None, typer.Argument(help="Job ids.", show_default=False)] = None,
    grid: Annotated[str | None, typer.Option(help="Every unfinished job of this grid.")] = None,
) -> None:
    """Cancel queued jobs; running ones are stopped by their worker within seconds."""
    ids = _selection(ctx, job_ids, grid)
    queued, running = store(ctx).cancel(ids, grid)
    typer.echo(f"cancelled {count(queued, 'queued job')}; asked workers to stop {count(running, 'running job')}")


def retry(
    ctx: typer.Context,
    job_ids: Annotated[list[str] | None, typer.Argument(help="Job ids.", show_default=False)] = None,
    grid: Annotated[str | None, typer.Option(help="Only this grid.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Every failed job.")] = False,
    lost: Annotated[bool, typer.Option("--lost", help="Failed jobs whose workers were lost.")] = False,
    cancelled: Annotated[bool, typer.Option("--cancelled", help="Cancelled jobs.")] = False,
    from_scratch: Annotated[bool, typer.Option("--from-scratch", help="Do not resume from checkpoints.")] = False,
) -> None:
    """Requeue failed (or cancelled) jobs with a fresh attempt budget."""
    from memq.errors import UserError

    ids = parse_ids(job_ids or [])
    if not (ids or failed or lost or cancelled):
        raise UserError("nothing selected", hint="give job ids, or --failed, --lost or --cancelled")
    st = store(ctx)
    _check_known(st, ids, grid)
    n = st.retry(ids, grid, failed=failed, lost=lost, cancelled=cancelled, from_scratch=from_scratch)
    typer.echo(f"requeued {count(n, 'job')}" + (" (from scratch)" if from_scratch else ""))


def _selection(ctx: typer.Context, job_ids: list[str] | None, grid: str | None) -> list[int]:
    from memq.errors import UserError

    ids = parse_ids(job_ids or [])
    if not ids and not grid:
        raise UserError("nothing selected", hint="give job ids or --grid NAME")
    _check_known(store(ctx), ids, grid)
    return ids


def _check_known(st, ids: list[int], grid: str | None) -> None:  # type: ignore[no-untyped-def]
    from memq.errors import UserError

    if grid and grid not in {g["name"] for g in st.grids()}:
        raise UserError(f"unknown grid {grid!r}", where="--grid", hint="see `memq status`")
    if ids:
        found = {r["id"] for r in st.jobs(ids=ids)}
        missing = [i for i in ids if i not in found]
        if missing:
            raise UserError(f"unknown job id {missing[0]}", hint="see `memq jobs`")


def pause(ctx: typer.Context, grid: Annotated[str, typer.Argument(help="Grid name.")]) -> None:
    """Stop workers from claiming this grid's jobs (running ones continue)."""
    _set_paused(ctx, grid, True)


def resume(ctx: typer.Context, grid: Annotated[str, typer.Argument(help="Grid name.")]) -> None:
    """Let workers claim this grid's jobs again."""
    _set_paused(ctx, grid, False)


def _set_paused(ctx: typer.Context, grid: str, paused: bool) -> None:
    from memq.errors import UserError

    if not store(ctx).set_paused(grid, paused):
        raise UserError(f"unknown grid {grid!r}", hint="see `memq status`")
    typer.echo(f"{grid}: {'paused' if paused else 'resumed'}")


def register(app: typer.Typer) -> None:
    app.command()(submit)
    app.command()(status)
    app.command()(jobs)
    app.command()(cancel)
    app.command()(retry)
    app.command()(pause)
    app.command()(resume)
