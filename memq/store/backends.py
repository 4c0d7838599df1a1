"""Which backend a root uses: PostgreSQL by URL, else SQLite in the root, in the mode it has.

The backends themselves: memq.store.backend (what they share), memq.store.sqlite (local and
shared mode), memq.store.postgres.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa

from memq.errors import UserError
from memq.store.backend import Backend
from memq.store.postgres import Postgres
from memq.store.sqlite import LocalSQLite, SharedSQLite, record_mode
from memq.store.sqlite_file import DB_FILE, recorded_mode


def _precreate(path: Path) -> bool:
    """Create an empty database file ourselves: SQLite would create it 0644, ignoring a root that
    is group-writable. Its journals then copy the file's mode. False if it existed."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError:
        return False
    return True


def open_backend(root: Path, db_url: str | None, db_mode: str | None, *, fs_local: bool) -> Backend:
    """Pick the backend for a root: PostgreSQL by URL, else SQLite in the mode the database has."""
    if db_url:
        scheme, sep, rest = db_url.partition("://")
        if scheme in ("postgresql", "postgres"):  # the driver memq ships with: psycopg 3
            scheme = "postgresql+psycopg"
        if scheme != "postgresql+psycopg" or not sep:
            raise UserError(f"unsupported database URL scheme {scheme!r}", where="--db",
                            hint="use postgresql+psycopg://USER@HOST/DB, or omit --db for SQLite in the root")
        try:
            return Postgres(f"{scheme}://{rest}")
        except (ValueError, sa.exc.ArgumentError):  # (their messages may quote the URL, password and all)
            raise UserError("not a valid database URL", where="--db",
                            hint="postgresql+psycopg://USER@HOST[:PORT]/DB[?PARAMETER=VALUE&...]") from None
    path = root / DB_FILE
    existing = recorded_mode(path)
    if existing is not None:
        if db_mode and db_mode != existing:
            raise UserError(f"database is in {existing} mode, not {db_mode}", where=str(path),
                            hint="memq db set-mode converts it when no worker is running")
        if existing == "local" and not fs_local:
            raise UserError("database is in local (WAL) mode but this host reaches it over a network "
                            "filesystem", where=str(path),
                            hint="run `memq db set-mode shared` on the host that created it")
        mode = existing
    else:
        mode = db_mode or ("local" if fs_local else "shared")
    # The engines never create the file (memq.store.sqlite._engine); a root whose queue was lost
    # was refused before we came here (memq.root).
    new = _precreate(path)
    if existing is None:
        record_mode(path, mode)
    return LocalSQLite(path, new=new) if mode == "local" else SharedSQLite(path, new=new)
