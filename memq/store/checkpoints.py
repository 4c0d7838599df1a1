"""The checkpoint registry: files a running attempt wrote, and artifacts made from finished jobs."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from memq.store import schema as s
from memq.store.base import StoreBase

C, J = s.checkpoints, s.jobs
Q = s.JobState
_KEY = ["job_id", "kind", "path"]  # a file is registered once per job and kind


def _is_current(conn: Connection, job_id: int, attempt: int) -> bool:
    """Whether (job_id, attempt) is the job's running attempt (the fence of every attempt's write)."""
    return conn.execute(sa.select(J.c.id).where(J.c.id == job_id, J.c.attempt == attempt,
                                                J.c.state == Q.RUNNING.value)).first() is not None


class CheckpointOps(StoreBase):
    """Checkpoints and artifacts by job: registered, forgotten, listed, marked synced."""

    def register_checkpoint(self, job_id: int, attempt: int, *, path: str, host: str, size: int, sha256: str,
                            metric: float | None, step: int | None, kind: str = "checkpoint") -> bool:
        """Record a checkpoint file of a running attempt (fenced); re-registering a path updates it."""
        now = time.time()

        def tx(conn: Connection) -> bool:
            if not _is_current(conn, job_id, attempt):
                return False
            values = {"attempt": attempt, "host": host, "size": size, "sha256": sha256, "metric": metric,
                      "step": step, "synced_path": None, "created_at": now}
            conn.execute(self.backend.insert(C).values(job_id=job_id, kind=kind, path=path, **values)
                         .on_conflict_do_update(index_elements=_KEY, set_=values))
            return True

        return self.backend.run(tx, write=True)

    def register_artifact(self, job_id: int, *, kind: str, path: str, host: str, size: int, sha256: str,
                          metric: float | None = None, step: int | None = None) -> None:
        """Record a file made from a finished job (a soup, predictions) under its last attempt."""
        now = time.time()

        def tx(conn: Connection) -> None:
            attempt = conn.execute(sa.select(J.c.attempt).where(J.c.id == job_id)).scalar_one()
            values = {"attempt": attempt, "host": host, "size": size, "sha256": sha256, "metric": metric,
                      "step": step, "synced_path": path, "created_at": now}
            conn.execute(self.backend.insert(C).values(job_id=job_id, kind=kind, path=path, **values)
                         .on_conflict_do_update(index_elements=_KEY, set_=values))

        self.backend.run(tx, write=True)

    def unregister_checkpoint(self, job_id: int, attempt: int, path: str, kind: str = "checkpoint") -> bool:
        """Forget a checkpoint file the attempt deleted (fenced)."""

        def tx(conn: Connection) -> bool:
            if not _is_current(conn, job_id, attempt):
                return False
            conn.execute(C.delete().where(C.c.job_id == job_id, C.c.kind == kind, C.c.path == path))
            return True

        return self.backend.run(tx, write=True)

    def checkpoints(self, *, job_ids: Iterable[int] = (), grid: str | None = None,
                    kind: str | None = None) -> list[dict[str, Any]]:
        cond = sa.true()
        job_ids = list(job_ids)
        if job_ids:
            cond &= C.c.job_id.in_(job_ids)
        if grid:
            cond &= C.c.job_id.in_(sa.select(J.c.id).join(s.grids, s.grids.c.id == J.c.grid_id)
                                   .where(s.grids.c.name == grid))
        if kind:
            cond &= C.c.kind == kind
        query = sa.select(C).where(cond).order_by(C.c.job_id, C.c.metric.desc(), C.c.id)
        return self._read(lambda conn: [dict(r._mapping) for r in conn.execute(query)])

    def mark_synced(self, checkpoint_id: int, synced_path: str | None) -> None:
        self.backend.run(lambda conn: conn.execute(C.update().where(C.c.id == checkpoint_id)
                                                   .values(synced_path=synced_path)), write=True)
