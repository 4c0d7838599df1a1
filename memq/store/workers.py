"""Workers: registration, heartbeats (leases by counter, not clock), death and draining."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Connection

from memq.errors import UserError
from memq.host import runs_here
from memq.store import schema as s
from memq.store import statements as q
from memq.store.backend import Backend
from memq.store.base import StoreBase
from memq.store.queue import finish_in
from memq.store.types import HeartbeatReply, Outcome, Running, WorkerRef

WS = s.WorkerState


class WorkerOps(StoreBase):
    """The workers' table, as the workers themselves and the reaper use it."""

    def register_worker(self, name: str, host: str, pid: int, boot: str, gpus: list[int], slots: int,
                        lease: float) -> WorkerRef:
        """Register a worker by name; a new incarnation of a known name takes over its row.

        Jobs still marked running under an earlier incarnation are lost with it and requeued.
        Refused while the earlier incarnation provably still runs on this host.
        """
        now = time.time()

        def tx(conn: Connection) -> tuple[WorkerRef, bool]:
            old = conn.execute(q.worker_by_name(name)).first()
            values = {"host": host, "pid": pid, "boot": boot, "gpus": gpus, "slots": slots, "lease": lease,
                      "state": WS.ACTIVE.value, "reason": None, "drain": False,
                      "heartbeat_at": now, "started_at": now, "sharing": None}
            if old is None:
                return WorkerRef(conn.execute(q.add_worker(name, values)).scalar_one(), 1), False
            if (old.state not in (WS.DEAD.value, WS.STOPPED.value) and old.pid != pid
                    and runs_here(old.host, old.boot, old.pid)):
                raise UserError(f"a worker named {name!r} already runs on this host (pid {old.pid})",
                                hint="give this one another --name")
            requeued = _requeue_worker_jobs(conn, self.backend, old.id, now)
            conn.execute(q.take_over_worker(old.id, old.incarnation + 1, values))
            return WorkerRef(old.id, old.incarnation + 1), bool(requeued)

        ref, requeued = self.backend.run(tx, write=True)
        if requeued:  # a new worker wakes nobody, but its last life's jobs are claimable again
            self.bump_version()
        return ref

    def heartbeat(self, ref: WorkerRef, running: Sequence[Running]) -> HeartbeatReply:
        """Renew the leases of all this worker's jobs with one write; learn what was fenced.

        ``running`` is every attempt the worker holds; a job the table gives this worker that is not
        among them was claimed by a transaction whose reply never arrived (the connection broke as it
        committed): it goes back to the queue, uncharged."""
        now = time.time()
        woke = False

        def tx(conn: Connection) -> HeartbeatReply:
            nonlocal woke
            woke = False  # (a retried transaction starts over)
            row, held_rows = self.backend.renew_lease(conn, ref, now)
            if row is None:
                return HeartbeatReply(alive=False, fenced=[(r.job_id, r.attempt) for r in running])
            current = {(r.id, r.attempt): r.cancel_requested for r in held_rows}
            reply = HeartbeatReply(alive=True, drain=row.drain)
            held = {(r.job_id, r.attempt) for r in running}
            for job_id, attempt in sorted(set(current) - held):
                outcome = Outcome(job_id, attempt, "requeued", reason="its claim's reply was lost")
                woke = finish_in(conn, self.backend, outcome, now)[1] or woke
            for r in running:
                if (r.job_id, r.attempt) not in current:
                    reply.fenced.append((r.job_id, r.attempt))
                    continue
                if current[(r.job_id, r.attempt)]:
                    reply.cancel.append(r.job_id)
                if r.progress is not None:
                    conn.execute(q.set_attempt_values(r.job_id, r.attempt, {"progress": r.progress}))
            return reply

        reply = self.backend.run(tx, write=True)
        if woke:
            self.bump_version()
        return reply

    def worker_heartbeats(self) -> dict[int, tuple[int, str, int]]:
        """id -> (heartbeat counter, state, running jobs) of every worker that could hold jobs."""
        return self._read(lambda conn: {r[0]: (r[1], r[2], r[3]) for r in conn.execute(q.worker_heartbeats())})

    def declare_dead(self, worker_id: int, seen_heartbeat: int, reason: str = "lost") -> list[int]:
        """Mark a worker dead if its heartbeat is still ``seen_heartbeat``; requeue its jobs."""
        now = time.time()

        def tx(conn: Connection) -> list[int]:
            hit = conn.execute(q.declare_dead(worker_id, seen_heartbeat, reason)).rowcount
            return _requeue_worker_jobs(conn, self.backend, worker_id, now) if hit else []

        return self._write(tx)

    def set_sharing(self, worker_id: int, sharing: dict[str, Any] | None) -> None:
        """How the worker's GPUs are shared now ({GPU: [jobs, share used]}), for `memq status`."""
        self.backend.run(lambda conn: conn.execute(q.set_sharing(worker_id, sharing)), write=True)

    def set_worker_state(self, worker_id: int, state: str, reason: str | None = None) -> None:
        self.backend.run(lambda conn: conn.execute(q.set_worker_state(worker_id, state, reason)), write=True)

    def request_drain(self, name: str) -> bool:
        """Ask a worker (by name) to stop claiming and requeue its jobs, as SIGTERM would."""
        return bool(self._write(lambda conn: conn.execute(q.request_drain(name)).rowcount))


def _requeue_worker_jobs(conn: Connection, backend: Backend, worker_id: int, now: float) -> list[int]:
    """The worker is gone: its running jobs lose this attempt (reason `lost`)."""
    rows = conn.execute(q.held_jobs(worker_id)).all()
    for row in rows:
        finish_in(conn, backend, Outcome(row.id, row.attempt, "lost", reason="lost"), now)
    return [row.id for row in rows]
