"""Reads for display (status, jobs, workers, the dashboard) and the integrity check: plain row dicts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy.engine import Connection

from memq.store import schema as s
from memq.store import statements as q
from memq.store.base import StoreBase


def _rows(conn: Connection, query: Any) -> list[dict[str, Any]]:
    result = conn.execute(query)
    keys = list(result.keys())  # (once: a row's own mapping costs more than its values, 1,000 workers)
    return [dict(zip(keys, row, strict=True)) for row in result]


def _durations(conn: Connection, names: dict[int, str]) -> dict[str, float]:
    """grid name (``names``: by grid id) -> mean run time of its succeeded jobs' last attempts."""
    return {names[i]: float(avg) for i, avg in conn.execute(q.mean_durations()) if avg is not None}


def _group_views(conn: Connection, rows: Sequence[Any], ids: list[int] | None,
                 counts: Iterable[tuple[int, str, int]] | None = None) -> dict[int, dict[str, Any]]:
    """Group id -> its name, readiness, the groups and single jobs it is after, and its counts by
    state; ``rows`` (id, name, ready) are the groups of ``ids`` (None: every group), ``counts`` their
    (group, state, jobs) when already read."""
    names = {r.id: r.name for r in rows}
    out = {r.id: {"name": r.name, "ready": r.ready, "after": [], "after_jobs": [],
                  "counts": dict.fromkeys(s.STATES, 0)} for r in rows}
    for gid, after in conn.execute(q.dependencies_of(ids)):
        out[gid]["after"].append(names[after])
    for gid, job_id, state in conn.execute(q.job_dependencies_of(ids)):
        out[gid]["after_jobs"].append({"id": job_id, "state": state})
    for gid, state, n in conn.execute(q.counts_by_group(ids)) if counts is None else counts:
        out[gid]["counts"][state] = n
    return out


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
            return list(_group_views(conn, rows, [r.id for r in rows]).values())

        return self._read(tx)

    def overview(self, *, with_groups: bool = True) -> dict[str, Any]:
        """What `memq status` shows, read in one transaction with one query per kind of thing:
        ``grids`` (id, name, paused, counts by state, and with ``with_groups`` their groups as
        :meth:`groups` gives them), ``durations`` (grid -> mean run time), ``running`` (running
        jobs, by index), ``workers`` (rows), ``failures`` (the 5 latest failed or lost attempts) and
        ``gpu_needs`` (grid -> GPUs needed -> queued jobs that need GPUs)."""

        def tx(conn: Connection) -> dict[str, Any]:
            grids = {r.id: {"id": r.id, "name": r.name, "paused": r.paused, "counts": dict.fromkeys(s.STATES, 0)}
                     for r in conn.execute(q.grids())}
            groups = conn.execute(q.all_groups()).all()
            grid_of = {r.id: r.grid_id for r in groups}
            by_group = conn.execute(q.counts_by_group()).all()
            for group_id, state, n in by_group:
                grids[grid_of[group_id]]["counts"][state] += n
            if with_groups:
                views = _group_views(conn, groups, None, by_group)
                for grid in grids.values():
                    grid["groups"] = []
                for r in groups:
                    grids[r.grid_id]["groups"].append(views[r.id])
            name = {i: g["name"] for i, g in grids.items()}
            gpu_needs: dict[str, dict[int, int]] = {}
            for grid_id, need, n in conn.execute(q.queued_gpu_jobs()):
                gpu_needs.setdefault(name[grid_id], {})[need] = n
            return {
                "grids": list(grids.values()),
                "durations": _durations(conn, name),
                "running": [{"id": r.id, "grid": name[r.grid_id], "attempt": r.attempt, "progress": r.progress,
                             "worker_id": r.worker_id} for r in conn.execute(q.running_jobs())],
                "workers": _rows(conn, q.workers()),
                "failures": _rows(conn, q.recent_failures(5)),
                "gpu_needs": gpu_needs,
            }

        return self._read(tx)

    def jobs(self, *, ids: Iterable[int] = (), grid: str | None = None, states: Sequence[str] = (),
             group: str | None = None, limit: int | None = None, newest_first: bool = False,
             keys: Iterable[str] = ()) -> list[dict[str, Any]]:
        query = q.jobs(q.jobs_where(ids, grid, states, keys=keys), group, limit, newest_first)
        return self._read(lambda conn: _rows(conn, query))

    def mean_durations(self) -> dict[str, float]:
        """grid name -> mean run time of its succeeded jobs' last attempts (for an ETA)."""

        return self._read(lambda conn: _durations(conn, dict(conn.execute(q.grid_names()).all())))

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
