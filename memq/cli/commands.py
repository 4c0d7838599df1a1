"""The `memq` command line as a Typer app. Nothing heavy is imported until a command needs it."""

from __future__ import annotations

from typing import Annotated

import typer

from memq import __version__
from memq.cli import db, ensemble, queue, worker
from memq.cli.group import MemqGroup
from memq.demo import demo

app = typer.Typer(
    cls=MemqGroup,  # --root, --db and --db-mode after the command's name too
    name="memq",
    help="A job queue for GPU clusters on a shared filesystem: submit grids, run workers, build ensembles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"memq {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    ctx: typer.Context,
    root: Annotated[str | None, typer.Option("--root", help="The shared memq root directory (env MEMQ_ROOT).")] = None,
    db: Annotated[str | None, typer.Option(
        "--db", help="postgresql+psycopg://USER@HOST/DB instead of SQLite in the root (env MEMQ_DB).")] = None,
    db_mode: Annotated[str | None, typer.Option(
        "--db-mode", help="SQLite mode for a new root: local (WAL, one host) or shared (NFS-safe lock). "
        "Default: by the root's filesystem type.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version.")] = False,
) -> None:
    from memq.options import RootOptions

    ctx.obj = RootOptions(root=root, db=db, db_mode=db_mode)


queue.register(app)
worker.register(app)
ensemble.register(app)
app.command()(demo)
app.add_typer(db.app, name="db")


def _add_plugin_commands() -> None:
    """Commands other packages publish (entry-point group ``memq.cli``): a Typer app is added as a
    command group (`memq data ...`), a plain function as one command (`memq score`)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="memq.cli"):
        try:
            plugin = ep.load()
        except ModuleNotFoundError as exc:
            if exc.name is None or not ep.value.startswith(exc.name):
                raise
            continue
        if isinstance(plugin, typer.Typer):
            app.add_typer(plugin, name=ep.name)
        else:
            app.command(name=ep.name)(plugin)


_add_plugin_commands()
