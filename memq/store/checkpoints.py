"""The checkpoint registry: files a running attempt wrote, and artifacts made from finished jobs."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy.engine import Connection

from memq.store import statements as q
from memq.store.base import StoreBase


class CheckpointOps(StoreBase):
    """Checkpoints and artifacts by job: registered, forgotten, listed, marked synced."""

    def register_checkpoint(self, job_id: int, attempt: int, *, path: str, host: str, size: int, sha256: str,
                            metric: float | None, step: int | None, kind: str = "checkpoint") -> bool:
        """Record a checkpoint file of a running attempt (fenced); re-registering a path updates it."""
        now = time.time()

        def tx(conn: Connection) -> bool:
            if conn.execute(q.running_attempt(job_id, attempt)).first() is None:
                return False
            values = {"attempt": attempt, "host": host, "size": size, "sha256": sha256, "metric": metric,
                      "step": step, "synced_path": None, "created_at": now}
            conn.execute(q.put_checkpoint(self.backend.insert, job_id, kind, path, values))
            return True

        return self.backend.run(tx, write=True)

    def register_artifact(self, job_id: int, *, kind: str, path: str, host: str, size: int, sha256: str,
                          metric: float | None = None, step: int | None = None) -> None:
        """Record a file made from a finished job (a soup, predictions) under its last attempt."""
        now = time.time()

        def tx(conn: Connection) -> None:
            attempt = conn.execute(q.last_attempt(job_id)).scalar_one()
            values = {"attempt": attempt, "host": host, "size": size, "sha256": sha256, "metric": metric,
                      "step": step, "synced_path": path, "created_at": now}
            conn.execute(q.put_checkpoint(self.backend.insert, job_id, kind, path, values))

        self.backend.run(tx, write=True)

    def unregister_checkpoint(self, job_id: int, attempt: int, path: str, kind: str = "checkpoint") -> bool:
        """Forget a checkpoint file the attempt deleted (fenced)."""

        def tx(conn: Connection) -> bool:
            if conn.execute(q.running_attempt(job_id, attempt)).first() is None:
                return False
            conn.execute(q.forget_checkpoint(job_id, kind, path))
            return True

        return self.backend.run(tx, write=True)

    def checkpoints(self, *, job_ids: Iterable[int] = (), grid: str | None = None,
                    kind: str | None = None) -> list[dict[str, Any]]:
        query = q.checkpoints(list(job_ids), grid, kind)
        return self._read(lambda conn: [dict(r._mapping) for r in conn.execute(query)])

    def mark_synced(self, checkpoint_id: int, synced_path: str | None) -> None:
        self.backend.run(lambda conn: conn.execute(q.mark_synced(checkpoint_id, synced_path)), write=True)
