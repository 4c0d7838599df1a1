"""A memq root: the shared directory holding the queue, logs and per-attempt job directories.

memq.paths spells out its layout.

Files take the root's own permission bits: group-writable only where the root is.
"""

from __future__ import annotations

from pathlib import Path

from memq.errors import UserError
from memq.files import apply_root_umask
from memq.options import RootOptions
from memq.store.backends import DB_FILE, open_backend
from memq.store.base import VERSION_FILE
from memq.store.store import Store


def _refuse_lost_queue(root: Path) -> None:
    """A root whose version file is there has held a queue (the file is first written after the
    schema's commit). If its SQLite file is gone or empty, the history was lost: say so rather than
    start an empty queue over it."""
    if not (root / VERSION_FILE).exists():  # (first: a concurrent first submit commits before writing it)
        return
    try:
        if (root / DB_FILE).stat().st_size:
            return
        state = "empty (0 bytes)"
    except FileNotFoundError:
        state = "missing"
    raise UserError(f"the database file is {state}, but this root has held a queue; memq will not start an empty one "
                    "over its history",
                    where=str(root / DB_FILE),
                    hint=f"restore {DB_FILE} from a backup, or give --db if the queue is in PostgreSQL; "
                    f"to start an empty queue here, delete {root / VERSION_FILE}")


def open_store(options: RootOptions, *, create: bool) -> Store:
    """Open the root's store; ``create`` makes the root and schema, otherwise they must exist."""
    root = options.resolve_root()
    url = options.db_url()
    if options.db_mode not in (None, "local", "shared"):
        raise UserError(f"unknown --db-mode {options.db_mode!r}", where="--db-mode", hint="local or shared")
    if not root.is_dir():
        if not create:
            raise UserError("no memq root here", where=str(root), hint="`memq submit GRID` creates one")
        try:
            root.mkdir(parents=True, mode=0o755)
        except OSError as exc:
            raise UserError(f"cannot create the root: {exc.strerror}", where=str(root)) from exc
    elif not url:
        _refuse_lost_queue(root)
        if not create and not (root / DB_FILE).exists():
            raise UserError("no queue database in this root", where=str(root), hint="`memq submit GRID` creates one")
    apply_root_umask(root)
    from memq.fsinfo import is_local

    backend = open_backend(root, url, options.db_mode, fs_local=is_local(root))
    store = Store(backend, root)
    try:
        if create:
            store.initialize()
        elif not store.exists():
            raise UserError("the database has no memq tables", where=backend.display_url(),
                            hint="`memq submit GRID` creates them")
    except UserError:
        raise
    except Exception as exc:  # an unreachable or broken database is the user's to fix
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError):
            detail = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0]
            raise UserError(f"cannot reach the database: {detail}", where=backend.display_url()) from exc
        raise
    return store
