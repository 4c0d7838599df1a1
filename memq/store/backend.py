"""What every backend does alike, and the operations whose SQL or driver use differ between them.

Every store operation is one function run by :meth:`Backend.run` inside one transaction. The
backends (memq.store.sqlite, memq.store.postgres) differ in how that transaction is opened and made
exclusive (design.md 4), and in a few operations the store asks of them by name: the dialect's
INSERT (for ON CONFLICT), bulk inserts, the hot path's claim and finish, the database's own
integrity check, and what a job process needs to open the store. The store never asks which
backend it has.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from memq.lock import LockLost
from memq.store import statements as q
from memq.store.errors import DatabaseDamaged, StoreUnavailable
from memq.store.types import WorkerRef

T = TypeVar("T")

_RETRIES = 50
# Query parameters of a database URL that hold secrets (libpq's password and sslpassword, and the like).
_SECRET_PARAMETER = re.compile("password|secret|token", re.IGNORECASE)


class _OperationalUnavailable(StoreUnavailable, sa.exc.OperationalError):
    """The database is unreachable or refused the transaction (also SQLAlchemy's OperationalError)."""


class _InterfaceUnavailable(StoreUnavailable, sa.exc.InterfaceError):
    """The driver's connection broke (also SQLAlchemy's InterfaceError)."""


def _unavailable(exc: sa.exc.OperationalError | sa.exc.InterfaceError) -> StoreUnavailable:
    cls = _OperationalUnavailable if isinstance(exc, sa.exc.OperationalError) else _InterfaceUnavailable
    return cls(exc.statement, exc.params, exc.orig, hide_parameters=exc.hide_parameters,
               connection_invalidated=exc.connection_invalidated, code=exc.code, ismulti=exc.ismulti)


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
        """Run ``fn`` in one transaction, retrying it on transient conflicts; commit on return.
        Raises :class:`StoreUnavailable` when the database cannot be reached."""
        for attempt in range(_RETRIES):
            try:
                with self._transaction(write) as conn:
                    return fn(conn)
            except LockLost:
                pass
            except sa.exc.OperationalError as exc:
                if not _is_transient(exc) or attempt == _RETRIES - 1:
                    raise _unavailable(exc) from exc
            except sa.exc.InterfaceError as exc:
                raise _unavailable(exc) from exc
            except sa.exc.DatabaseError as exc:
                if not self.is_damage(exc):
                    raise
                detail = str(exc.orig or exc).strip().splitlines()[0]
                raise DatabaseDamaged(self.display_url(), detail) from exc
            time.sleep(min(0.002 * 2 ** min(attempt, 8), 0.5) * (0.5 + random.random()))
        raise RuntimeError("transaction retried too often")

    def _transaction(self, write: bool) -> contextlib.AbstractContextManager[Connection]:
        raise NotImplementedError

    def display_url(self) -> str:
        """The URL to show: its password, and query parameters that hold secrets, as ***."""
        url = self.engine.url
        query = [(key, "***" if _SECRET_PARAMETER.search(key) else value)
                 for key, values in url.query.items() for value in ((values,) if isinstance(values, str) else values)]
        shown = url.set(query={}).render_as_string(hide_password=True)
        return f"{shown}?{urlencode(query, safe='*')}" if query else shown

    def is_damage(self, exc: sa.exc.DatabaseError) -> bool:
        """Whether the database says its own files are corrupt (not a conflict, not an outage)."""
        return False

    def describe_lock(self) -> str:
        """Who holds the lock that makes transactions exclusive, for `memq db check`."""
        return "none (the database's own locking)"

    def job_env(self) -> dict[str, str]:
        """Environment a job process needs to open this store, besides MEMQ_ROOT (never a secret
        on a command line)."""
        return {}

    def dispose(self) -> None:
        self.engine.dispose()

    # -- operations whose SQL differs -------------------------------------------------------------

    def insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT for ``table`` (it has ``on_conflict_do_nothing/update``)."""
        raise NotImplementedError

    def lock_schema(self, conn: Connection) -> None:
        """Serialise schema creation and upgrades between processes, for this transaction."""

    def insert_new_jobs(self, conn: Connection, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> int:
        """Insert driver-ready job rows (JSON columns as text) of keys that are new, taking them as they
        come: the caller holds the grid's lock (statements.lock_grid) and passes each key once.
        Returns how many it inserted."""
        raise NotImplementedError

    def claim(self, conn: Connection, params: dict[str, Any], *, in_grids: bool, limit: int) -> list[Any]:
        """Claim up to ``limit`` jobs (see statements.claim) and record their attempts; their rows,
        in claim order. Here one job per statement: the writers of this database take turns."""
        rows: list[Any] = []
        while len(rows) < limit:
            row = conn.execute(q.claim(in_grids), params).first()
            if row is None:
                break
            conn.execute(q.attempt_start(), {"p_job": row.id, "p_attempt": row.attempt,
                                             "p_wid": params["p_wid"], "p_now": params["p_now"]})
            rows.append(row)
        return rows

    def finish(self, conn: Connection, variant: str, outcomes: list[dict[str, Any]]) -> list[Any]:
        """End attempts (see statements.finish; ``outcomes``: its parameters, one dict per attempt)
        and their attempt rows; per outcome the job's row, or None where it was fenced."""
        rows = []
        for params in outcomes:
            row = conn.execute(q.finish(variant), params).first()
            if row is not None:
                conn.execute(q.attempt_end(), params)
            rows.append(row)
        return rows

    def renew_lease(self, conn: Connection, ref: WorkerRef, now: float) -> tuple[Any | None, list[Any]]:
        """One heartbeat's write: the worker's row (``drain``) or None where this incarnation is
        dead, and the (id, attempt, cancel_requested) of the jobs the table says it runs."""
        row = conn.execute(q.renew_lease(ref, now)).first()
        return row, [] if row is None else list(conn.execute(q.held_jobs(ref.id)))

    @contextlib.contextmanager
    def driver_cursor(self, conn: Connection, sql: str) -> Iterator[Any]:
        """A cursor of the driver itself, in ``conn``'s transaction, for bulk work SQLAlchemy would
        slow down; the driver's errors are raised as SQLAlchemy's (a lost connection invalidated),
        so :meth:`run` retries and reports them as for any other statement. ``sql``: for errors."""
        driver = conn.connection.driver_connection
        error = conn.dialect.loaded_dbapi.Error
        try:
            with contextlib.closing(driver.cursor()) as cursor:  # type: ignore[union-attr]
                yield cursor
        except error as exc:
            if conn.dialect.is_disconnect(exc, driver, None):
                conn.invalidate(exc)
            raise sa.exc.DBAPIError.instance(sql, None, exc, error) from exc

    def all_rows(self, conn: Connection, stmt: Any) -> list[tuple[Any, ...]]:
        """Every row of ``stmt`` as the driver's tuples, its values written into the SQL (no JSON
        or other typed columns): SQLAlchemy's per-row work was 40% of reading 100,000 job keys."""
        sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        with self.driver_cursor(conn, sql) as cursor:
            cursor.execute(sql)
            return cursor.fetchall()

    def integrity_problems(self, conn: Connection) -> list[str]:
        """What the database's own consistency check reports ([] when it finds nothing, or the
        server keeps its files consistent itself)."""
        return []
