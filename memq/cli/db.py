"""`memq db`: integrity and lock state of the job table, and its SQLite mode."""

from __future__ import annotations

from typing import Annotated

import typer

from memq.cli.common import options, print_json, store

app = typer.Typer(help="Check the job table; switch its SQLite mode.", no_args_is_help=True)


@app.command()
def check(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run the database's integrity check and memq's invariants; show the lock's state."""
    st = store(ctx)
    backend = st.backend
    report = {"database": backend.display_url(), "mode": backend.mode, "problems": st.integrity(),
              "lock": backend.describe_lock()}
    if as_json:
        print_json(report)
    else:
        typer.echo(f"database: {report['database']} ({report['mode']} mode)")
        typer.echo(f"lock: {report['lock']}")
        typer.echo("integrity: ok" if not report["problems"] else "integrity: PROBLEMS")
        for problem in report["problems"]:
            typer.echo(f"  {problem}")
    if report["problems"]:
        raise typer.Exit(1)


@app.command("set-mode")
def set_mode(
    ctx: typer.Context,
    mode: Annotated[str, typer.Argument(help="local (WAL, one host) or shared (rollback journal, memq's lock).")],
) -> None:
    """Convert an SQLite root between local and shared mode (stop every worker first)."""
    from memq.store.sqlite import set_mode as convert

    path = convert(options(ctx).resolve_root(), mode)
    typer.echo(f"{path}: {mode} mode")
