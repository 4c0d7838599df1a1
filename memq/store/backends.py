"""How a transaction reaches the database: SQLite on one host, SQLite on NFS, PostgreSQL.

Every store operation is one function run by :meth:`Backend.run` inside one transaction. The three
backends differ only in how that transaction is opened and made exclusive (design.md 4):

* ``local``: SQLite in WAL mode with a kept connection; SQLite's own locks are sound on a local
  filesystem. Writers start with ``BEGIN IMMEDIATE`` so they queue instead of deadlocking.
* ``shared``: SQLite with a rollback journal (DELETE), synchronous=FULL, a fresh connection per
  transaction, SQLite's own (unreliable over NFS) locking off, and every transaction - reads too -
  under memq's :class:`~memq.lock.LeaseLock`, checked again just before commit. Each file operation
  there is a round trip to the server, so the code avoids the ones it can (see SharedSQLite).
* ``postgresql``: the server's MVCC; claims use ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from memq.errors import UserError
from memq.files import write_text_atomically
from memq.lock import LeaseLock, LockLost

T = TypeVar("T")

DB_FILE = "queue.db"
LOCK_FILE = "queue.db.lock"
_RETRIES = 50


MODE_FILE = "queue.mode"


def recorded_mode(path: Path) -> str | None:
    """The SQLite mode a database was created in ('local' or 'shared'); None if it is new.

    Kept in a side file: reading the database file's own header would mean opening and closing
    it, and closing any descriptor of a file drops every POSIX lock this process holds on it -
    SQLite's included (sqlite.org/howtocorrupt.html, 2.2).
    """
    mode_file = path.with_name(MODE_FILE)
    try:
        mode = mode_file.read_text().strip()
    except FileNotFoundError:
        return None
    if mode not in ("local", "shared"):
        raise UserError(f"unknown mode {mode!r}", where=str(mode_file), hint="local or shared")
    return mode


def record_mode(path: Path, mode: str) -> None:
    write_text_atomically(path.with_name(MODE_FILE), mode + "\n")


def _is_transient(exc: sa.exc.OperationalError) -> bool:
    text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    code = getattr(exc.orig, "sqlstate", None)
    return "locked" in text or "busy" in text or code in {"40001", "40P01"}


class Backend:
    """One database, reached one transaction at a time."""

    mode: str
    dialect: str

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def run(self, fn: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run ``fn`` in one transaction, retrying it on transient conflicts; commit on return."""
        for attempt in range(_RETRIES):
            try:
                with self._transaction(write) as conn:
                    return fn(conn)
            except LockLost:
                pass
            except sa.exc.OperationalError as exc:
                if not _is_transient(exc) or attempt == _RETRIES - 1:
                    raise
            time.sleep(min(0.002 * 2 ** min(attempt, 8), 0.5) * (0.5 + random.random()))
        raise RuntimeError("transaction retried too often")

    def _transaction(self, write: bool) -> contextlib.AbstractContextManager[Connection]:
        raise NotImplementedError

    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def dispose(self) -> None:
        self.engine.dispose()


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


class LocalSQLite(Backend):
    """SQLite on a filesystem only this host writes: WAL and SQLite's own locking."""

    mode = "local"
    dialect = "sqlite"

    def __init__(self, path: Path, *, new: bool = False) -> None:
        engine = sa.create_engine(
            f"sqlite:///{path}", connect_args={"timeout": 60, "check_same_thread": False},
        )
        _sqlite_events(engine, ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL"), new=new)
        super().__init__(engine)
        self.path = path

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(memq_write=write)
            with conn.begin():
                yield conn


class SharedSQLite(Backend):
    """SQLite on a network filesystem: every transaction under memq's lease lock."""

    mode = "shared"
    dialect = "sqlite"

    def __init__(self, path: Path, grace: float | None = None, *, new: bool = False) -> None:
        engine = sa.create_engine(
            f"sqlite:///file:{path}?nolock=1&uri=true",
            connect_args={"timeout": 60, "check_same_thread": False},
            poolclass=NullPool,
        )
        # No per-connection pragma that reads the file: a pragma run before BEGIN loads the schema
        # in a read transaction of its own, one more hot-journal check (two more round trips to the
        # server per path component). The journal mode is DELETE from creation on (`memq db
        # set-mode shared` converts a WAL database); synchronous is FULL by default in most builds.
        pragmas = () if _default_synchronous() == _FULL else ("PRAGMA synchronous=FULL",)
        _sqlite_events(engine, pragmas, new=new)
        super().__init__(engine)
        self.path = path
        lock_path = path.with_name(LOCK_FILE)
        self.lock = LeaseLock(lock_path) if grace is None else LeaseLock(lock_path, grace=grace)

    def dispose(self) -> None:
        super().dispose()
        self.lock.close()

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


class Postgres(Backend):
    """PostgreSQL: the scale-out backend (same schema)."""

    mode = "postgresql"
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        # The hot path's statements are prepared (psycopg does it after a few runs); a generic plan
        # spares the server from planning the claim again on every call: measured, that planning
        # was most of the server's CPU per job (PostgreSQL >= 12).
        options = {"options": "-c plan_cache_mode=force_generic_plan"}
        super().__init__(sa.create_engine(url, pool_size=2, max_overflow=4, pool_recycle=3600, connect_args=options))

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn


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
        return Postgres(f"{scheme}://{rest}")
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
        mode, new = existing, False
    else:
        mode = db_mode or ("local" if fs_local else "shared")
        new = _precreate(path)
        record_mode(path, mode)
    return LocalSQLite(path, new=new) if mode == "local" else SharedSQLite(path, new=new)
