"""Reads for display (status, jobs, workers, the dashboard) and the integrity check: plain row dicts.

What `memq status` reads is plain SQL in memq.store.overview (also read without SQLAlchemy, by
memq.cli.lean); it runs here on the driver's cursor, in the store's transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy.engine import Connection

from memq.store import overview
from memq.store import statements as q
from memq.store.base import StoreBase
from memq.store.fingerprint import unchanged as submitted

T = TypeVar("T")


def _rows(conn: Connection, query: Any) -> list[dict[str, Any]]:
    result = conn.execute(query)
    keys = list(result.keys())  # (once: a row's own mapping costs more than its values, 1,000 workers)
    return [dict(zip(keys, row, strict=True)) for row in result]


class ReadOps(StoreBase):
    """What `memq status`, `memq jobs`, `memq workers`, the dashboard and `memq db check` show."""

    def counts(self) -> dict[str, dict[str, int]]:
        """grid name -> state -> number of jobs (every state present, zeros included)."""
        grids = self._plain(lambda cursor: overview.grids(cursor, with_groups=False))
        return {g["name"]: g["counts"] for g in grids.values()}

    def grids(self) -> list[dict[str, Any]]:
        return self._read(lambda conn: _rows(conn, q.grids()))

    def groups(self, grid: str) -> list[dict[str, Any]]:
        """Groups of a grid with their dependencies and per-state counts (for blocked reasons)."""
        grids = self._plain(overview.grids)
        return next((g["groups"] for g in grids.values() if g["name"] == grid), [])

    def overview(self, *, with_groups: bool = True) -> dict[str, Any]:
        """What `memq status` shows, read in one transaction (memq.store.overview.read)."""
        return self._plain(lambda cursor: overview.read(cursor, with_groups=with_groups))

    def jobs(self, *, ids: Iterable[int] = (), grid: str | None = None, states: Sequence[str] = (),
             group: str | None = None, limit: int | None = None, newest_first: bool = False,
             keys: Iterable[str] = ()) -> list[dict[str, Any]]:
        query = q.jobs(q.jobs_where(ids, grid, states, keys=keys), group, limit, newest_first)
        return self._read(lambda conn: _rows(conn, query))

    def mean_durations(self) -> dict[str, float]:
        """grid name -> mean run time of its succeeded jobs' last attempts (for an ETA)."""
        return self._plain(overview.mean_durations)

    def attempts(self, job_id: int) -> list[dict[str, Any]]:
        return self._read(lambda conn: _rows(conn, q.attempts(job_id)))

    def unchanged(self, fingerprint: str) -> str | None:
        """The grid last submitted with this fingerprint, if all its jobs are still there
        (memq.store.fingerprint.unchanged)."""
        return self._plain(lambda cursor: submitted(cursor, fingerprint))

    def workers(self) -> list[dict[str, Any]]:
        return self._plain(overview.workers)

    def _plain(self, fn: Callable[[Any], T]) -> T:
        """``fn`` of a driver cursor in one read transaction (memq.store.overview's plain SQL)."""

        def tx(conn: Connection) -> T:
            with self.backend.driver_cursor(conn, getattr(fn, "__qualname__", "overview")) as cursor:
                return fn(cursor)

        return self._read(tx)

    def integrity(self) -> list[str]:
        """Problems found by the database's own check plus memq's invariants; [] when healthy."""

        def tx(conn: Connection) -> list[str]:
            problems = self.backend.integrity_problems(conn)
            problems.extend(f"duplicate job key {r.key}" for r in conn.execute(q.duplicate_keys()))
            orphan = conn.execute(q.running_without_worker()).scalar_one()
            if orphan:
                problems.append(f"{orphan} running jobs have no worker")
            return problems

        return self._read(tx)
