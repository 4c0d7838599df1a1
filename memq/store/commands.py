"""What an operator asks of the queue: cancel, retry, pause and resume."""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy.engine import Connection

from memq.store import schema as s
from memq.store import statements as q
from memq.store.base import StoreBase

Q = s.JobState


class CommandOps(StoreBase):
    """Operator commands on jobs and grids."""

    def cancel(self, ids: Iterable[int] = (), grid: str | None = None) -> tuple[int, int]:
        """Cancel queued jobs now and ask workers to stop running ones; returns (queued, running)."""
        now = time.time()
        sel = q.jobs_where(ids, grid)

        def tx(conn: Connection) -> tuple[int, int]:
            return conn.execute(q.cancel_queued(sel, now)).rowcount, conn.execute(q.cancel_running(sel)).rowcount

        return self._write(tx)

    def retry(self, ids: Iterable[int] = (), grid: str | None = None, *, failed: bool = False,
              lost: bool = False, cancelled: bool = False, from_scratch: bool = False) -> int:
        """Requeue ended jobs with a fresh attempt budget; returns how many."""
        states = [Q.FAILED.value] * (failed or lost) + [Q.CANCELLED.value] * cancelled
        ids = list(ids)
        if ids and not states:
            states = [Q.FAILED.value, Q.CANCELLED.value]
        sel = q.jobs_where(ids, grid, states, reason="lost" if lost and not failed else None)

        def tx(conn: Connection) -> int:
            grid_ids = conn.execute(q.grids_of_jobs(sel)).scalars().all()
            n = conn.execute(q.requeue(sel, from_scratch)).rowcount
            for grid_id in grid_ids:
                conn.execute(q.refresh_ready(grid_id))
            return n

        return self._write(tx)

    def set_paused(self, grid: str, paused: bool) -> bool:
        return bool(self._write(lambda conn: conn.execute(q.set_paused(grid, paused)).rowcount))
