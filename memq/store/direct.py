"""Reading the store without SQLAlchemy, on a connection of its own (sqlite3, or psycopg itself for
PostgreSQL): for the commands whose start-up SQLAlchemy's import would dominate (memq.cli.lean).

Only the plain case is read this way: a local-mode SQLite database on a local filesystem, or a
PostgreSQL database, at this schema version. Anything else - no root, shared mode (its reads go
under memq's lease lock), an older schema (the Store upgrades it), a database that cannot be
reached or read - gives None, and the caller takes the Store's way, which says what is wrong.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from memq.errors import UserError
from memq.files import apply_root_umask
from memq.store.names import SCHEMA_VERSION

T = TypeVar("T")

VERSION = "SELECT value FROM meta WHERE key = 'schema_version'"
_PG_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
_CONNECT_TIMEOUT = 5  # seconds


def read(root: Path, url: str | None, db_mode: str | None, fn: Callable[[Any], T], *, fs_local: bool) -> T | None:
    """``fn`` of a cursor in one read transaction of the store of ``root`` (``url``: in PostgreSQL;
    ``fs_local``: the root is on a local filesystem); None where only the Store may read it (see
    above), or the read failed."""
    if not root.is_dir():
        return None
    if url:
        return _postgres(url, fn)
    if db_mode not in (None, "local") or not fs_local:
        return None
    return _sqlite(root, fn)


def _current(cursor: Any) -> bool:
    cursor.execute(VERSION)
    row = cursor.fetchone()
    return row is not None and row[0] == str(SCHEMA_VERSION)


def _sqlite(root: Path, fn: Callable[[Any], T]) -> T | None:
    import sqlite3

    from memq.store.sqlite_file import DB_FILE, connect, recorded_mode

    path = root / DB_FILE
    try:
        if not path.stat().st_size or recorded_mode(path) != "local":
            return None
    except (OSError, UserError):
        return None
    apply_root_umask(root)  # (a read may create the WAL's files)
    try:
        with contextlib.closing(connect(path, shared=False)) as conn:
            conn.isolation_level = None
            cursor = conn.cursor()
            cursor.execute("BEGIN")
            try:
                return fn(cursor) if _current(cursor) else None
            finally:
                cursor.execute("ROLLBACK")
    except sqlite3.Error:
        return None


def _postgres(url: str, fn: Callable[[Any], T]) -> T | None:
    """Through psycopg without SQLAlchemy; None where that fails, so the Store reads it and reports
    what is wrong."""
    import psycopg

    scheme, sep, rest = url.partition("://")
    if scheme not in _PG_SCHEMES or not sep:
        return None
    try:
        # (bounded: where the server cannot be reached, the Store tries again and says so)
        with psycopg.connect(f"postgresql://{rest}", connect_timeout=_CONNECT_TIMEOUT) as conn:
            conn.read_only = True
            with conn.cursor() as cursor:
                return fn(cursor) if _current(cursor) else None
    except psycopg.Error:
        return None
