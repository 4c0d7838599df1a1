"""memq.job: everything a job kind may use from memq, and the only module ``jobs`` imports (design.md 2).

A kind is ``def run(ctx: JobContext) -> None`` published as a :class:`KindSpec`. Through ``ctx`` it
reads its parameters and directories, reports progress and metrics, registers checkpoints and
artifacts, reads other jobs' rows and checkpoints, and syncs checkpoints to the shared root; it
never holds the store. It raises :class:`PermanentError` (or :class:`UserError`) when retrying
cannot help, and stops on :class:`Fenced`. Files it publishes go through the atomic writers; files
it trusts go through the verified loads. The last section serves kinds' CLI commands
(``memq data``, ``memq eval``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from memq.checkpoints import SOUP_ARTIFACT, ChecksumError, load_verified, sha256_file, verify
from memq.context import JobContext
from memq.errors import Fenced, PermanentError, UserError
from memq.files import fsync_path, temp_path, write_atomically, write_text_atomically
from memq.kinds import KindSpec
from memq.lock import LeaseLock
from memq.paths import job_dir, prediction_dir, soup_path
from memq.spec import scheme_name
from memq.sync import SyncReport

if TYPE_CHECKING:
    import typer

__all__ = [
    "SOUP_ARTIFACT", "ChecksumError", "Fenced", "JobContext", "KindSpec", "LeaseLock", "PermanentError",
    "SyncReport", "UserError", "command_root", "fsync_path", "grid_jobs", "job_dir", "load_verified",
    "prediction_dir", "scheme_name", "sha256_file", "soup_path", "temp_path", "verify", "write_atomically",
    "write_text_atomically",
]


def command_root(ctx: typer.Context, root: str | None = None) -> Path:
    """The memq root a kind's CLI command works on: ``root``, else `memq --root` or MEMQ_ROOT."""
    return _options(ctx, root).resolve_root()


def grid_jobs(ctx: typer.Context, grid: str, root: str | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """The root and the rows of a grid's jobs; ``grid`` is a grid name or its grid file."""
    from memq.grid import load_grid_file
    from memq.root import open_store

    path = Path(grid)
    name = load_grid_file(path)[0].name if path.suffix in (".yaml", ".yml") and path.is_file() else grid
    store = open_store(_options(ctx, root), create=False)
    rows = store.jobs(grid=name)
    if not rows:
        raise UserError(f"no jobs of grid {name!r}", where=str(store.root), hint="`memq status` lists the grids")
    return store.root, rows


def _options(ctx: typer.Context, root: str | None) -> Any:
    from dataclasses import replace

    options = ctx.find_root().obj
    return options if root is None else replace(options, root=root)
