"""The `memq` command line: `memq status` and the resubmit of an unchanged grid are answered
without Typer or SQLAlchemy where they can be (memq.cli.lean); every other command, and every case
that path leaves, goes to the Typer app (memq.cli.commands)."""

from __future__ import annotations

import os
import sys
from typing import Any


def __getattr__(name: str) -> Any:
    """``app``: the Typer app (memq.cli.commands), imported when asked for."""
    if name == "app":
        from memq.cli.commands import app

        return app
    raise AttributeError(name)


def _echo_error(line: str) -> None:
    import typer

    typer.echo(line, err=True)


def main() -> None:
    """Entry point: user errors print one line and exit 2; internal errors exit 1."""
    from memq.errors import UserError

    debug = "--debug" in sys.argv or bool(os.environ.get("MEMQ_DEBUG"))
    try:
        from memq.cli import lean

        if not lean.run(sys.argv[1:]):
            from memq.cli.commands import app

            app()
    except UserError as exc:
        _echo_error(exc.line())
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _echo_error("interrupted")
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        _echo_error(f"error: internal: {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        sys.exit(1)
