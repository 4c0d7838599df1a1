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
    lock = getattr(backend, "lock", None)
    report = {"database": backend.display_url(), "mode": backend.mode, "problems": st.integrity(),
              "lock": lock.describe() if lock is not None else "none (the database's own locking)"}
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
    import sqlite3

    from memq.errors import UserError
    from memq.lock import LeaseLock
    from memq.store.backends import DB_FILE, LOCK_FILE, record_mode

    if mode not in ("local", "shared"):
        raise UserError(f"unknown mode {mode!r}", hint="local or shared")
    root = options(ctx).resolve_root()
    path = root / DB_FILE
    if not path.exists():
        raise UserError("no queue database here", where=str(path))
    with LeaseLock(root / LOCK_FILE):
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute(f"PRAGMA journal_mode={'WAL' if mode == 'local' else 'DELETE'}")
        finally:
            conn.close()
        record_mode(path, mode)
    typer.echo(f"{path}: {mode} mode")
