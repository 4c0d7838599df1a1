"""Reads for display (status, jobs, workers, the dashboard) and the integrity check: plain row dicts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy.engine import Connection

from memq.store import schema as s
from memq.store import statements as q
from memq.store.base import StoreBase


def _rows(conn: Connection, query: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(query)]


class ReadOps(StoreBase):
    """What `memq status`, `memq jobs`, `memq workers`, the dashboard and `memq db check` show."""

    def counts(self) -> dict[str, dict[str, int]]:
        """grid name -> state -> number of jobs (every state present, zeros included)."""

        def tx(conn: Connection) -> dict[str, dict[str, int]]:
            names = dict(conn.execute(q.grid_names()).all())
            grid_of = dict(conn.execute(q.group_grids()).all())
            out = {name: dict.fromkeys(s.STATES, 0) for name in names.values()}
            for group_id, state, n in conn.execute(q.counts_by_group()):
                out[names[grid_of[group_id]]][state] += n
            return out

        return self._read(tx)

    def grids(self) -> list[dict[str, Any]]:
        return self._read(lambda conn: _rows(conn, q.grids()))

    def groups(self, grid: str) -> list[dict[str, Any]]:
        """Groups of a grid with their dependencies and per-state counts (for blocked reasons)."""

        def tx(conn: Connection) -> list[dict[str, Any]]:
            rows = conn.execute(q.groups_of(grid)).all()
            names = {r.id: r.name for r in rows}
            out = {r.id: {"name": r.name, "ready": r.ready, "after": [], "after_jobs": [],
                          "counts": dict.fromkeys(s.STATES, 0)} for r in rows}
            for gid, after in conn.execute(q.dependencies_of(list(names))):
                out[gid]["after"].append(names[after])
            for gid, job_id, state in conn.execute(q.job_dependencies_of(list(names))):
                out[gid]["after_jobs"].append({"id": job_id, "state": state})
            for gid, state, n in conn.execute(q.counts_by_group(list(names))):
                out[gid]["counts"][state] = n
            return list(out.values())

        return self._read(tx)

    def jobs(self, *, ids: Iterable[int] = (), grid: str | None = None, states: Sequence[str] = (),
             group: str | None = None, limit: int | None = None, newest_first: bool = False,
             keys: Iterable[str] = ()) -> list[dict[str, Any]]:
        query = q.jobs(q.jobs_where(ids, grid, states, keys=keys), group, limit, newest_first)
        return self._read(lambda conn: _rows(conn, query))

    def mean_durations(self) -> dict[str, float]:
        """grid name -> mean run time of its succeeded jobs' last attempts (for an ETA)."""
        return self._read(lambda conn: {name: float(avg) for name, avg in conn.execute(q.mean_durations())
                                        if avg is not None})

    def recent_failures(self, limit: int = 5) -> list[dict[str, Any]]:
        return self._read(lambda conn: _rows(conn, q.recent_failures(limit)))

    def queued_needing_gpus(self, gpus: int) -> dict[str, dict[int, int]]:
        """grid -> GPUs needed -> queued jobs, for the queued jobs that need more than ``gpus``."""
        out: dict[str, dict[int, int]] = {}
        for grid, need, n in self._read(lambda conn: conn.execute(q.queued_needing_gpus(), {"p_gpus": gpus}).all()):
            out.setdefault(grid, {})[need] = n
        return out

    def attempts(self, job_id: int) -> list[dict[str, Any]]:
        return self._read(lambda conn: _rows(conn, q.attempts(job_id)))

    def workers(self) -> list[dict[str, Any]]:
        return self._read(lambda conn: _rows(conn, q.workers()))

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
