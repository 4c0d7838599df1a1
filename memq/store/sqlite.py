"""SQLite in the root: ``local`` mode on one host, ``shared`` mode on a network filesystem.

* ``local``: WAL with a kept connection; SQLite's own locks are sound on a local filesystem.
  Writers start with ``BEGIN IMMEDIATE`` so they queue instead of deadlocking.
* ``shared``: a rollback journal (DELETE), synchronous=FULL, a fresh connection per transaction,
  SQLite's own (unreliable over NFS) locking off, and every transaction - reads too - under memq's
  :class:`~memq.lock.LeaseLock`, checked again just before commit. Each file operation there is a
  round trip to the server, so the code avoids the ones it can (see SharedSQLite).
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool, QueuePool

from memq.errors import UserError
from memq.files import write_text_atomically
from memq.lock import LeaseLock
from memq.store import statements as q
from memq.store.backend import Backend
from memq.store.sqlite_file import DB_FILE as DB_FILE
from memq.store.sqlite_file import MODE_FILE, MODES, connect

LOCK_FILE = "queue.db.lock"
_JOURNAL = {"local": "WAL", "shared": "DELETE"}


def record_mode(path: Path, mode: str) -> None:
    write_text_atomically(path.with_name(MODE_FILE), mode + "\n")


def set_mode(root: Path, mode: str) -> Path:
    """Convert the root's database to ``mode`` (its journal mode, and the recorded mode) under
    memq's lock; every worker must be stopped. Returns the database's path."""
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}", hint="local or shared")
    path = root / DB_FILE
    if not path.exists():
        raise UserError("no queue database here", where=str(path))
    with LeaseLock(root / LOCK_FILE):
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute(f"PRAGMA journal_mode={_JOURNAL[mode]}")
        record_mode(path, mode)
    return path


# A new database gets 8 KiB pages: measured on the two-host rig, the schema and a small queue's
# indexes then take fewer pages, and a claim + finish ~10% fewer round trips to the server.
_NEW_DATABASE = ("PRAGMA page_size=8192",)


def _sqlite_events(engine: Engine, pragmas: tuple[str, ...], *, new: bool = False) -> None:
    """Take transaction control from the driver: we emit BEGIN (IMMEDIATE for writers) ourselves.
    ``new``: this process created the (empty) file; its first connection sets the page size."""
    first = list(_NEW_DATABASE if new else ())

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        for pragma in [*first, *pragmas]:
            cur.execute(pragma)
        first.clear()
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("memq_write", True)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


_FULL = 2


@functools.cache
def _default_synchronous() -> int:
    """The synchronous level a new connection of this SQLite build starts with."""
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])


def _engine(path: Path, *, shared: bool) -> Engine:
    """An engine on the database file ``path`` (memq.store.sqlite_file.connect); shared: a fresh
    connection per transaction."""
    return sa.create_engine("sqlite://", creator=lambda: connect(path, shared=shared),
                            poolclass=NullPool if shared else QueuePool)


@functools.cache
def _insert_jobs_sql(columns: tuple[str, ...]) -> str:
    """sqlite3's SQL of statements.add_new_jobs, its values positional in ``columns``' order."""
    compiled = q.add_new_jobs(sqlite.insert, columns).compile(dialect=sqlite.dialect())
    if compiled.positiontup != list(columns):
        raise ValueError(f"job columns not in the table's order: {columns}")
    return str(compiled)


class _SQLite(Backend):
    """What both SQLite modes share: the dialect's statements and its integrity check."""

    dialect = "sqlite"

    def __init__(self, engine: Engine, path: Path) -> None:
        super().__init__(engine)
        self.path = path

    def display_url(self) -> str:
        return str(self.path)

    def is_damage(self, exc: sa.exc.DatabaseError) -> bool:
        code = getattr(exc.orig, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)

    def insert(self, table: sa.Table) -> Any:
        return sqlite.insert(table)

    def insert_new_jobs(self, conn: Connection, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> int:
        sql = _insert_jobs_sql(tuple(columns))
        with self.driver_cursor(conn, sql) as cursor:
            cursor.executemany(sql, rows)
            return max(cursor.rowcount, 0)

    def integrity_problems(self, conn: Connection) -> list[str]:
        result = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check")]
        return [] if result == ["ok"] else result


class LocalSQLite(_SQLite):
    """SQLite on a filesystem only this host writes: WAL and SQLite's own locking."""

    mode = "local"

    def __init__(self, path: Path, *, new: bool = False) -> None:
        engine = _engine(path, shared=False)
        _sqlite_events(engine, ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL"), new=new)
        super().__init__(engine, path)

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(memq_write=write)
            with conn.begin():
                yield conn


class SharedSQLite(_SQLite):
    """SQLite on a network filesystem: every transaction under memq's lease lock."""

    mode = "shared"

    def __init__(self, path: Path, grace: float | None = None, *, new: bool = False) -> None:
        engine = _engine(path, shared=True)
        # No per-connection pragma that reads the file: a pragma run before BEGIN loads the schema
        # in a read transaction of its own, one more hot-journal check (two more round trips to the
        # server per path component). The journal mode is DELETE from creation on (`memq db
        # set-mode shared` converts a WAL database); synchronous is FULL by default in most builds.
        pragmas = () if _default_synchronous() == _FULL else ("PRAGMA synchronous=FULL",)
        _sqlite_events(engine, pragmas, new=new)
        super().__init__(engine, path)
        lock_path = path.with_name(LOCK_FILE)
        self.lock = LeaseLock(lock_path) if grace is None else LeaseLock(lock_path, grace=grace)

    def dispose(self) -> None:
        super().dispose()
        self.lock.close()

    def describe_lock(self) -> str:
        return self.lock.describe()

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Connection]:
        # The file is opened after the lock is taken and closed before it is given back: a network
        # filesystem's client revalidates its cache of a file when it is opened (close-to-open
        # consistency), so a connection opened earlier can read pages another host has since
        # rewritten (measured on the two-host rig: lost finishes).
        with self.lock, self.engine.connect() as conn:
            # SQLite's locks are off (nolock), so IMMEDIATE takes none; it makes SQLite open its read
            # transaction at BEGIN, and the schema is then read within it: without it, loading the
            # schema and running the first statement each check for a hot journal.
            conn = conn.execution_options(memq_write=True)
            with conn.begin():
                yield conn
                self.lock.check()  # fenced: roll back rather than commit past grace/2
