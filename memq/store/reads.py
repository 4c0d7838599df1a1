"""Reads for display (status, jobs, workers, the dashboard) and the integrity check: plain row dicts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from memq.store import schema as s
from memq.store.base import StoreBase
from memq.store.statements import jobs_where

J = s.jobs
Q = s.JobState


def _job_columns() -> list[Any]:
    return [J.c.id, J.c.key, s.grids.c.name.label("grid"), s.groups.c.name.label("group"), J.c.kind,
            J.c.params, J.c.repeat, J.c.state, J.c.attempt, J.c.failures, J.c.crashes, J.c.reason,
            J.c.exit_code, J.c.priority, J.c.gpus, J.c.cpus, J.c.mem_gb, J.c.max_attempts,
            J.c.submitted_at, J.c.started_at, J.c.finished_at, J.c.progress, J.c.metrics,
            J.c.worker_id, J.c.command, J.c.cancel_requested]


class ReadOps(StoreBase):
    """What `memq status`, `memq jobs`, `memq workers`, the dashboard and `memq db check` show."""

    def counts(self) -> dict[str, dict[str, int]]:
        """grid name -> state -> number of jobs (every state present, zeros included)."""

        def tx(conn: Connection) -> dict[str, dict[str, int]]:
            names = dict(conn.execute(sa.select(s.grids.c.id, s.grids.c.name)).all())
            grid_of = dict(conn.execute(sa.select(s.groups.c.id, s.groups.c.grid_id)).all())
            out = {name: dict.fromkeys(s.STATES, 0) for name in names.values()}
            for group_id, state, n in conn.execute(  # (group, state): the one index that has state
                    sa.select(J.c.group_id, J.c.state, sa.func.count()).group_by(J.c.group_id, J.c.state)):
                out[names[grid_of[group_id]]][state] += n
            return out

        return self._read(tx)

    def grids(self) -> list[dict[str, Any]]:
        gr = s.grids
        return self._read(lambda conn: [dict(r._mapping) for r in conn.execute(
            sa.select(gr.c.id, gr.c.name, gr.c.paused, gr.c.source, gr.c.created_at).order_by(gr.c.id))])

    def groups(self, grid: str) -> list[dict[str, Any]]:
        """Groups of a grid with their dependencies and per-state counts (for blocked reasons)."""
        g, gr, d = s.groups, s.grids, s.group_deps

        def tx(conn: Connection) -> list[dict[str, Any]]:
            rows = conn.execute(sa.select(g.c.id, g.c.name, g.c.ready).join(gr, gr.c.id == g.c.grid_id)
                                .where(gr.c.name == grid).order_by(g.c.id)).all()
            names = {r.id: r.name for r in rows}
            out = {r.id: {"name": r.name, "ready": r.ready, "after": [],
                          "counts": dict.fromkeys(s.STATES, 0)} for r in rows}
            for gid, after in conn.execute(sa.select(d.c.group_id, d.c.after_group_id)
                                           .where(d.c.group_id.in_(list(names)))):
                out[gid]["after"].append(names[after])
            for gid, state, n in conn.execute(sa.select(J.c.group_id, J.c.state, sa.func.count())
                                              .where(J.c.group_id.in_(list(names)))
                                              .group_by(J.c.group_id, J.c.state)):
                out[gid]["counts"][state] = n
            return list(out.values())

        return self._read(tx)

    def jobs(self, *, ids: Iterable[int] = (), grid: str | None = None, states: Sequence[str] = (),
             group: str | None = None, limit: int | None = None, newest_first: bool = False,
             ) -> list[dict[str, Any]]:
        sel = jobs_where(ids, grid, states)
        if group:
            sel &= s.groups.c.name == group
        order = J.c.id.desc() if newest_first else J.c.id
        query = (sa.select(*_job_columns())
                 .select_from(J.join(s.grids, s.grids.c.id == J.c.grid_id)
                              .join(s.groups, s.groups.c.id == J.c.group_id))
                 .where(sel).order_by(order).limit(limit))
        return self._read(lambda conn: [dict(r._mapping) for r in conn.execute(query)])

    def mean_durations(self) -> dict[str, float]:
        """grid name -> mean run time of its succeeded jobs' last attempts (for an ETA)."""
        gr = s.grids
        query = (sa.select(gr.c.name, sa.func.avg(J.c.finished_at - J.c.started_at))
                 .join(gr, gr.c.id == J.c.grid_id).where(J.c.state == Q.SUCCEEDED.value).group_by(gr.c.name))
        return self._read(lambda conn: {name: float(avg) for name, avg in conn.execute(query) if avg is not None})

    def recent_failures(self, limit: int = 5) -> list[dict[str, Any]]:
        a = s.attempts
        query = (sa.select(a.c.job_id, a.c.attempt, a.c.outcome, a.c.exit_code, a.c.reason, a.c.ended_at)
                 .where(a.c.outcome.in_(["failed", "lost"]))
                 .order_by(a.c.ended_at.desc(), a.c.job_id.desc()).limit(limit))
        return self._read(lambda conn: [dict(r._mapping) for r in conn.execute(query)])

    def attempts(self, job_id: int) -> list[dict[str, Any]]:
        a, w = s.attempts, s.workers
        query = (sa.select(a.c.attempt, a.c.started_at, a.c.ended_at, a.c.outcome, a.c.exit_code, a.c.reason,
                           w.c.name.label("worker"), w.c.host)
                 .select_from(a.outerjoin(w, w.c.id == a.c.worker_id))
                 .where(a.c.job_id == job_id).order_by(a.c.attempt))
        return self._read(lambda conn: [dict(r._mapping) for r in conn.execute(query)])

    def workers(self) -> list[dict[str, Any]]:
        w = s.workers
        return self._read(lambda conn: [dict(r._mapping) for r in conn.execute(
            sa.select(w).order_by(w.c.id))])

    def integrity(self) -> list[str]:
        """Problems found by the database's own check plus memq's invariants; [] when healthy."""

        def tx(conn: Connection) -> list[str]:
            problems = self.backend.integrity_problems(conn)
            dup = conn.execute(sa.select(J.c.key).group_by(J.c.key).having(sa.func.count() > 1)).all()
            problems.extend(f"duplicate job key {r.key}" for r in dup)
            orphan = conn.execute(sa.select(sa.func.count()).select_from(J)
                                  .where(J.c.state == Q.RUNNING.value, J.c.worker_id.is_(None))).scalar_one()
            if orphan:
                problems.append(f"{orphan} running jobs have no worker")
            return problems

        return self._read(tx)
