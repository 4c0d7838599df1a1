"""Jobs in and out of the queue: submit, claim, finish, and a running attempt's progress.

Writes made on behalf of an attempt name ``(job_id, attempt)`` and are refused (return False) when
the job has moved on. :func:`finish_in` is a step of a transaction that other parts of the store take
too (a lost worker's jobs are finished in its heartbeat, or when it is declared dead).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy.engine import Connection

from memq.spec import GridSpec, JobSpec
from memq.store import schema as s
from memq.store import statements as q
from memq.store.backend import Backend
from memq.store.base import MAX_BACKOFF, StoreBase
from memq.store.types import Capacity, Claim, Outcome, SubmitResult, WorkerRef

Q = s.JobState


class QueueOps(StoreBase):
    """Submitting grids, and the worker's hot path: claim and finish."""

    def submit(self, grid: GridSpec, fingerprint: str | None = None) -> SubmitResult:
        """Insert the grid's jobs; keys already present are left as they are (idempotent).
        ``fingerprint``: of what was expanded into ``grid`` (memq.cli.lean.fingerprint), kept on the
        grid's row with its job count when no queued job differs from the file (else none is kept:
        the next submit expands the file again, and says so again)."""
        now = time.time()
        insert = self.backend.insert

        def tx(conn: Connection) -> SubmitResult:
            conn.execute(q.add_grid(insert, grid.name, grid.source, now))
            # Locked (PostgreSQL): a concurrent submit of this grid - the only one that can add its
            # keys, which name the grid - waits here until this one commits, then sees its jobs.
            grid_id = conn.execute(q.lock_grid(grid.name)).scalar_one()
            conn.execute(q.add_groups(insert), [{"grid_id": grid_id, "name": g.name, "ready": True}
                                                for g in grid.groups])
            group_ids = dict(conn.execute(q.group_ids(grid_id)).all())
            conn.execute(q.clear_dependencies([group_ids[g.name] for g in grid.groups]))
            edges = [{"group_id": group_ids[g.name], "after_group_id": group_ids[a]}
                     for g in grid.groups for a in g.after]
            if edges:
                conn.execute(q.add_dependencies(), edges)
            known = dict(self.backend.all_rows(conn, q.job_hashes(grid_id)))
            fresh: list[JobSpec] = []
            taken: set[str] = set()  # (a key twice in one grid goes in once)
            edited = 0
            runs = _WhatRuns()
            for job in grid.jobs:
                seen = known.get(job.key)
                if seen is None and job.key not in taken:
                    fresh.append(job)
                    taken.add(job.key)
                elif seen is not None and seen != runs.of(job)[1]:
                    edited += 1
            rows = _new_job_rows(fresh, grid_id, group_ids, now, runs)
            added = self.backend.insert_new_jobs(conn, NEW_JOB_COLUMNS, rows)
            _add_job_dependencies(conn, grid, group_ids)
            conn.execute(q.refresh_ready(grid_id))
            conn.execute(q.set_fingerprint(grid_id, None if edited else fingerprint, len(known) + added))
            return SubmitResult(grid.name, added, len(grid.jobs) - len(fresh), edited)

        return self._write(tx)

    def claim(self, worker: WorkerRef, capacity: Capacity, done: Outcome | None = None,
              ) -> tuple[bool | None, Claim | None]:
        """Finish ``done`` (if given) and claim the next job that fits, in one transaction.

        Returns (whether ``done`` was accepted or None, the claim or None). See :meth:`claim_many`.
        """
        accepted, claims = self.claim_many(worker, capacity, [] if done is None else [done], 1)
        return (accepted[0] if done is not None else None), (claims[0] if claims else None)

    def claim_many(self, worker: WorkerRef, capacity: Capacity, done: Sequence[Outcome], limit: int,
                   ) -> tuple[list[bool], list[Claim]]:
        """Record every outcome in ``done`` and claim up to ``limit`` jobs, in one transaction.

        Returns whether each outcome was accepted, and the claims. Each claimed job fits
        ``capacity`` on its own (a worker that claims ahead starts them one after another). Order:
        highest priority first, then submission order; only groups whose dependencies have
        succeeded, only unpaused grids. A worker declared dead (or replaced) claims nothing; its
        next heartbeat tells it so.
        """
        now = time.time()

        def tx(conn: Connection) -> tuple[list[bool], list[Claim], bool]:
            accepted, wake = finish_all(conn, self.backend, done, now)
            claims = [] if capacity.empty or limit < 1 else self._claim(conn, worker, capacity, now, limit,
                                                                         beat=not done)
            return accepted, claims, wake

        accepted, claims, wake = self.backend.run(tx, write=True)
        if wake:
            self.bump_version()
        return accepted, claims

    def _claim(self, conn: Connection, worker: WorkerRef, cap: Capacity, now: float, limit: int, *,
               beat: bool) -> list[Claim]:
        params: dict[str, Any] = {"p_wid": worker.id, "p_inc": worker.incarnation, "p_free_gpus": cap.gpus,
                                  "p_min_gpus": cap.min_gpus, "p_free_slots": cap.slots, "p_now": now,
                                  "p_horizon": now + MAX_BACKOFF, **cap.sharing_params()}
        if cap.grids:
            params["p_grids"] = list(cap.grids)
        rows = self.backend.claim(conn, params, in_grids=bool(cap.grids), limit=limit)
        if len(rows) < limit:
            due = conn.execute(q.next_due(), params).scalar()
            self.retry_in = None if due is None else max(due - now, 0.0)
        if beat and rows:
            # A claim from idle is a sign of life: observers must not mistake an idle worker's old
            # counter, unchanged for hours, for a stalled worker that now holds a job. (A worker
            # that just finished a job was heartbeating while it ran.)
            conn.execute(q.beat(), {"p_wid": worker.id})
        return [Claim(job_id=row.id, attempt=row.attempt, key=row.key, grid=self._name(conn, "grids", row.grid_id),
                      group=self._name(conn, "groups", row.group_id),
                      kind=row.kind, params=row.params, repeat=row.repeat, command=row.command,
                      gpus=row.gpus, cpus=row.cpus, mem_gb=row.mem_gb, from_scratch=row.from_scratch,
                      gpu_share=row.gpu_share, gpu_mem_gb=row.gpu_mem_gb) for row in rows]

    def waiting_gpus(self, most: int, grids: tuple[str, ...] = ()) -> int | None:
        """How many GPUs the first GPU job in claim order asks for, of those asking for at most
        ``most`` (of ``grids``, if given); None when no such job can be claimed."""
        now = time.time()
        params: dict[str, Any] = {"p_most_gpus": most, "p_now": now, "p_horizon": now + MAX_BACKOFF}
        if grids:
            params["p_grids"] = list(grids)
        return self._read(lambda conn: conn.execute(q.first_gpu_job(bool(grids)), params).scalar())

    def _name(self, conn: Connection, table: str, row_id: int) -> str:
        key = (table, row_id)
        if key not in self._names:
            self._names[key] = conn.execute(q.name_of(table), {"p_id": row_id}).scalar_one()
        return self._names[key]

    def finish(self, outcome: Outcome) -> bool:
        """Record how an attempt ended; False if the attempt had been superseded (fenced)."""
        now = time.time()
        accepted, wake = self.backend.run(lambda conn: finish_in(conn, self.backend, outcome, now), write=True)
        if wake:
            self.bump_version()
        return accepted

    def update_attempt(self, job_id: int, attempt: int, *, progress: dict[str, Any] | None = None,
                       metrics: dict[str, Any] | None = None) -> bool:
        """Progress or metrics from a running attempt; False if it has been superseded."""

        def tx(conn: Connection) -> bool:
            row = conn.execute(q.running_attempt(job_id, attempt)).first()
            if row is None:
                return False
            values: dict[str, Any] = {}
            if progress is not None:
                values["progress"] = progress
            if metrics:
                values["metrics"] = {**(row.metrics or {}), **metrics}
            if values:
                conn.execute(q.set_attempt_values(job_id, attempt, values))
            return True

        return self.backend.run(tx, write=True)


# The columns a submit writes, in the order of :func:`_new_job_rows`' values and of the table.
NEW_JOB_COLUMNS = ("key", "grid_id", "group_id", "kind", "params", "repeat", "command", "spec_hash", "gpus", "cpus",
                   "mem_gb", "gpu_share", "gpu_mem_gb", "priority", "max_attempts", "state", "attempt",
                   "failures", "crashes", "cancel_requested", "from_scratch", "submitted_at")


class _WhatRuns:
    """A job's command as JSON text and its spec hash, worked out once per group rather than per job:
    a group's jobs share one command list and their resources (keyed by the list's identity, which
    the grid keeps alive meanwhile; an equal list elsewhere only misses the memo)."""

    def __init__(self) -> None:
        self._memo: dict[tuple[Any, ...], tuple[str | None, str]] = {}

    def of(self, j: JobSpec) -> tuple[str | None, str]:
        what = (id(j.command), *j.run_fields)
        found = self._memo.get(what)
        if found is None:
            found = self._memo[what] = (None if j.command is None else json.dumps(j.command), j.spec_hash)
        return found


def _new_job_rows(jobs: Sequence[JobSpec], grid_id: int, group_ids: dict[str, int], now: float, runs: _WhatRuns,
                  ) -> Iterator[tuple[Any, ...]]:
    """Driver-ready rows of new jobs (JSON columns as JSON text, or None for SQL NULL): a bulk insert
    of 100,000 jobs spent most of its time in SQLAlchemy's per-value processing. Made as they are
    sent, so that the database works on the first rows while later ones are made."""
    queued = Q.QUEUED.value
    for j in jobs:
        command, spec_hash = runs.of(j)
        yield (j.key, grid_id, group_ids[j.group], j.kind, json.dumps(j.params), j.repeat, command, spec_hash,
               j.gpus, j.cpus, j.mem_gb, j.gpu_share, j.gpu_mem_gb, j.priority, j.max_attempts, queued, 0, 0, 0,
               False, False, now)


# -- steps of a transaction -----------------------------------------------------------------------

def finish_in(conn: Connection, backend: Backend, o: Outcome, now: float) -> tuple[bool, bool]:
    """Apply an outcome; returns (accepted, whether some job may have become claimable)."""
    accepted, wake = finish_all(conn, backend, [o], now)
    return accepted[0], wake


def finish_all(conn: Connection, backend: Backend, outcomes: Sequence[Outcome], now: float,
               ) -> tuple[list[bool], bool]:
    """Apply outcomes (one statement per kind of ending where the backend can); returns whether each
    was accepted, and whether some job may have become claimable."""
    by_variant: dict[str, list[int]] = {}
    params = []
    for i, o in enumerate(outcomes):
        variant = o.state if o.state in ("failed", "failed_final", "lost", "requeued", "requeued_alone") else "ended"
        by_variant.setdefault(variant, []).append(i)
        params.append({"p_job": o.job_id, "p_attempt": o.attempt, "p_now": now,
                       "p_state": o.state.removesuffix("_final").removesuffix("_alone"), "p_exit_code": o.exit_code,
                       "p_reason": o.reason, "p_retry_at": now + min(o.backoff, MAX_BACKOFF)})
    rows: list[Any] = [None] * len(outcomes)
    for variant, indexes in by_variant.items():
        for i, row in zip(indexes, backend.finish(conn, variant, [params[i] for i in indexes]), strict=True):
            rows[i] = row
    wake = False
    for o, row in zip(outcomes, rows, strict=True):
        if row is not None:
            wake = _after_finish(conn, o, row) or wake
    return [row is not None for row in rows], wake


def _after_finish(conn: Connection, o: Outcome, row: Any) -> bool:
    """The rest of an accepted outcome: its metrics, and the groups that wait for its job or group.
    Returns whether some job may have become claimable."""
    if o.metrics:
        conn.execute(q.set_metrics(o.job_id, {**(row.metrics or {}), **o.metrics}))
    if row.state == Q.SUCCEEDED.value and row.has_job_dependants:
        conn.execute(q.refresh_followers(o.job_id))
        if row.has_dependants:
            _group_succeeded(conn, row.group_id)
        return True
    if row.state == Q.SUCCEEDED.value and row.has_dependants:
        return _group_succeeded(conn, row.group_id)
    return row.state == Q.QUEUED.value


def _add_job_dependencies(conn: Connection, grid: GridSpec, group_ids: dict[str, int]) -> None:
    """Replace the edges of the grid's groups that wait for single jobs (named by key)."""
    conn.execute(q.clear_job_dependencies([group_ids[g.name] for g in grid.groups]))
    keys = sorted({key for g in grid.groups for key in g.after_jobs})
    if not keys:
        return
    ids = dict(conn.execute(q.job_ids_of(keys)).all())
    conn.execute(q.add_job_dependencies(), [{"group_id": group_ids[g.name], "after_job_id": ids[key]}
                                            for g in grid.groups for key in g.after_jobs])


def _group_succeeded(conn: Connection, group_id: int) -> bool:
    """A job of a group others are `after` succeeded: if the group is complete, wake them."""
    if conn.execute(q.group_pending(), {"p_group": group_id}).first() is not None:
        return False
    conn.execute(q.refresh_ready(conn.execute(q.grid_of_group(group_id)).scalar_one()))
    return True
