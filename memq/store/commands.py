"""What an operator asks of the queue: cancel, retry, pause and resume."""

from __future__ import annotations

import time
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from memq.store import schema as s
from memq.store.base import StoreBase
from memq.store.queue import refresh_ready
from memq.store.statements import jobs_where

J = s.jobs
Q = s.JobState


class CommandOps(StoreBase):
    """Operator commands on jobs and grids."""

    def cancel(self, ids: Iterable[int] = (), grid: str | None = None) -> tuple[int, int]:
        """Cancel queued jobs now and ask workers to stop running ones; returns (queued, running)."""
        now = time.time()
        sel = jobs_where(ids, grid)

        def tx(conn: Connection) -> tuple[int, int]:
            queued = conn.execute(J.update().where(sel, J.c.state == Q.QUEUED.value)
                                  .values(state=Q.CANCELLED.value, finished_at=now,
                                          reason="cancelled")).rowcount
            running = conn.execute(J.update().where(sel, J.c.state == Q.RUNNING.value)
                                   .values(cancel_requested=True)).rowcount
            return queued, running

        return self._write(tx)

    def retry(self, ids: Iterable[int] = (), grid: str | None = None, *, failed: bool = False,
              lost: bool = False, cancelled: bool = False, from_scratch: bool = False) -> int:
        """Requeue ended jobs with a fresh attempt budget; returns how many."""
        states = [Q.FAILED.value] * (failed or lost) + [Q.CANCELLED.value] * cancelled
        ids = list(ids)
        if ids and not states:
            states = [Q.FAILED.value, Q.CANCELLED.value]
        sel = jobs_where(ids, grid, states, reason="lost" if lost and not failed else None)

        def tx(conn: Connection) -> int:
            grid_ids = conn.execute(sa.select(J.c.grid_id).where(sel).distinct()).scalars().all()
            n = conn.execute(J.update().where(sel).values(
                state=Q.QUEUED.value, failures=0, crashes=0, reason=None, exit_code=None,
                not_before=None, finished_at=None, from_scratch=from_scratch)).rowcount
            for grid_id in grid_ids:
                refresh_ready(conn, grid_id)
            return n

        return self._write(tx)

    def set_paused(self, grid: str, paused: bool) -> bool:
        gr = s.grids
        return bool(self._write(lambda conn: conn.execute(
            gr.update().where(gr.c.name == grid).values(paused=paused)).rowcount))
