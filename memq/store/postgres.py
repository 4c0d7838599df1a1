"""PostgreSQL: the scale-out backend (same schema; the server's MVCC, claims ``FOR UPDATE SKIP LOCKED``).

Where it departs from SQLite: a worker's claims take a batch of jobs in one statement, its finishes
end a batch of attempts in one statement, and both write their attempt rows in that statement; a
heartbeat renews the lease and reads the worker's jobs in one statement; the hot path's compiled
SQL goes straight to psycopg; submits copy new jobs in with COPY (under the grid's row lock);
schema changes are serialised by an advisory lock; a job process gets the URL without its password.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from memq.store import statements as q
from memq.store.backend import Backend
from memq.store.types import WorkerRef

_PLANNED_COLUMNS = ("id", "state", "priority", "gpus", "not_before", "grid_id", "group_id", "worker_id")
_SCHEMA_LOCK = 7405321  # the advisory lock key under which the schema is created or upgraded


class Postgres(Backend):
    """PostgreSQL reached through psycopg 3."""

    mode = "postgresql"
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        # The hot path's statements are prepared (psycopg does it after a few runs); a generic plan
        # spares the server from planning the claim again on every call: measured, that planning
        # was most of the server's CPU per job (PostgreSQL >= 12).
        options = {"options": "-c plan_cache_mode=force_generic_plan"}
        super().__init__(sa.create_engine(url, pool_size=2, max_overflow=4, pool_recycle=3600, connect_args=options))
        self._compiled: dict[int, tuple[str, dict[str, Any]]] = {}

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def job_env(self) -> dict[str, str]:
        """The URL without its password in MEMQ_DB, the password in PGPASSWORD (libpq reads it when
        the URL has none). An environment is readable only by its own user (and root), unlike a
        command line, and leaves no file behind when a worker is killed."""
        url = self.engine.url
        query = dict(url.query)
        password = url.password if url.password is not None else query.pop("password", None)
        bare = sa.URL.create(url.drivername, url.username, None, url.host, url.port, url.database, query)
        env = {"MEMQ_DB": bare.render_as_string(hide_password=False)}
        if password is not None:
            env["PGPASSWORD"] = str(password)
        return env

    def insert(self, table: sa.Table) -> Any:
        return postgresql.insert(table)

    def lock_schema(self, conn: Connection) -> None:
        conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})"))

    def insert_new_jobs(self, conn: Connection, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> int:
        # COPY, psycopg's bulk path (executemany spent ~8 s of Python per 100,000 jobs), straight
        # into jobs: the submit holds the grid's row lock, so no other transaction adds these keys
        # (they name the grid), and ids follow the rows' order. The rows are made as they are sent,
        # so the server inserts while the next are made (Store.submit of 100,000: 1.69 -> 1.40 s).
        from psycopg import sql

        copy_sql = sql.SQL("COPY jobs ({}) FROM STDIN").format(sql.SQL(", ").join(map(sql.Identifier, columns)))
        added = 0
        with self.driver_cursor(conn, "COPY jobs") as cursor, cursor.copy(copy_sql) as copy:
            for row in rows:
                copy.write_row(row)
                added += 1
        if added:
            # Fresh statistics, or claims plan a full scan; of the columns the claims and the status
            # filter, group and order by (all of them, JSON included, took 2.5x as long at 100,000 jobs).
            conn.execute(sa.text(f"ANALYZE jobs ({', '.join(_PLANNED_COLUMNS)})"))
        return added

    def claim(self, conn: Connection, params: dict[str, Any], *, in_grids: bool, limit: int) -> list[Any]:
        stmt = q.claim_recording_attempts(in_grids)
        params = {**params, "p_limit": limit}
        if in_grids:  # an expanding IN list needs SQLAlchemy
            return list(conn.execute(stmt, params).all())
        return self._rows(conn, stmt, params)

    def finish(self, conn: Connection, variant: str, outcomes: list[dict[str, Any]]) -> list[Any]:
        # One statement for every outcome of this variant; (job, attempt) named twice ends once.
        arrays = {name: [o[one] for o in outcomes] for name, (one, _) in q.FINISH_ARRAYS.items()}
        ended = {(r.id, r.attempt): r for r in self._rows(conn, q.finish_recording_attempts(variant),
                                                          {**arrays, "p_now": outcomes[0]["p_now"]})}
        return [ended.pop((o["p_job"], o["p_attempt"]), None) for o in outcomes]

    def renew_lease(self, conn: Connection, ref: WorkerRef, now: float) -> tuple[Any | None, list[Any]]:
        # One round trip instead of two (a heartbeat's client CPU was twice a claim's)
        rows = self._rows(conn, q.renew_lease_reading_jobs(),
                          {"p_wid": ref.id, "p_incarnation": ref.incarnation, "p_now": now})
        return (rows[0], [r for r in rows if r.id is not None]) if rows else (None, [])

    def _rows(self, conn: Connection, stmt: Any, params: dict[str, Any]) -> list[Any]:
        """The rows of a hot-path statement, its compiled SQL sent straight to psycopg in the
        same transaction: SQLAlchemy's per-execution work was a third of a claim's CPU. Driver errors
        are raised as SQLAlchemy's (and a lost connection is invalidated), so retries and reconnects
        work as for any other statement."""
        import psycopg
        from psycopg.rows import namedtuple_row

        key = id(stmt)  # (the hot path's statements are built once and live as long as the process)
        if key not in self._compiled:
            compiled = stmt.compile(dialect=conn.dialect)
            constants = {k: v for k, v in compiled.params.items() if not k.startswith("p_")}
            self._compiled[key] = (str(compiled), constants)
        text, constants = self._compiled[key]
        values = {**constants, **params}
        driver = conn.connection.driver_connection
        try:
            with driver.cursor(row_factory=namedtuple_row) as cursor:  # type: ignore[union-attr]
                return cursor.execute(text, values).fetchall()
        except psycopg.Error as exc:
            if conn.dialect.is_disconnect(exc, driver, None):
                conn.invalidate(exc)
            raise sa.exc.DBAPIError.instance(text, values, exc, psycopg.Error) from exc
