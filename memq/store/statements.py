"""The store's named SQL statements, and the conditions several of them share.

Each statement is built once (building one costs more than running it on the hot path) and takes
its values as bind parameters named ``p_*``; constants are written into the SQL as literals, so
both planners can match the partial indexes (schema: ``state = 'queued'``) and no execution binds
them. Which statement runs where is the backend's choice (memq.store.backends): PostgreSQL runs
the ``*_recording_attempt`` forms, which write the attempt row in the same statement.
Queries shaped by a caller's filters (the display reads) stay with their method.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from memq.store import schema as s
from memq.store.types import WorkerRef

J, W, A = s.jobs, s.workers, s.attempts
Q, WS = s.JobState, s.WorkerState
bp = sa.bindparam

# A job has a worker exactly while it runs. This is the condition of the running jobs' index
# (schema: ix_jobs_running), so a query for running jobs says it too, and the planners use that index.
RUNNING_ON_A_WORKER = J.c.worker_id.is_not(None)


def _lit(value: str | int) -> Any:
    """A constant written into the SQL: bound parameters cost every execution on the hot path."""
    return sa.literal_column(f"'{value}'" if isinstance(value, str) else str(int(value)))


def worker_alive(ref: WorkerRef) -> Any:
    """This incarnation of the worker is the registered one, and it was not declared dead or stopped."""
    return (W.c.id == ref.id) & (W.c.incarnation == ref.incarnation) & W.c.state.notin_(
        [WS.DEAD.value, WS.STOPPED.value])


def jobs_where(ids: Iterable[int] = (), grid: str | None = None, states: Sequence[str] = (),
               reason: str | None = None) -> Any:
    """The jobs an operator command or a listing names (every filter given must hold)."""
    cond = sa.true()
    ids = list(ids)
    if ids:
        cond &= J.c.id.in_(ids)
    if grid:
        cond &= J.c.grid_id == sa.select(s.grids.c.id).where(s.grids.c.name == grid).scalar_subquery()
    if states:
        cond &= J.c.state.in_(list(states))
        if list(states) == [Q.RUNNING.value]:
            cond &= RUNNING_ON_A_WORKER
    if reason:
        cond &= J.c.reason == reason
    return cond


# -- the worker's hot path ------------------------------------------------------------------------

@functools.cache
def claim(in_grids: bool) -> Any:
    """Take the next job that fits (``p_free_gpus``, ``p_free_slots``) for worker ``p_wid``, if its
    incarnation ``p_inc`` is alive: highest priority first, then submission order, only ready groups
    of unpaused grids, only jobs past their back-off. ``in_grids``: only the grids ``p_grids``."""
    g, gr = s.groups, s.grids
    alive = sa.exists().where(W.c.id == bp("p_wid"), W.c.incarnation == bp("p_inc"),
                              W.c.state != _lit(WS.DEAD.value), W.c.state != _lit(WS.STOPPED.value))
    fits = sa.or_(sa.and_(J.c.gpus > _lit(0), J.c.gpus <= bp("p_free_gpus")),
                  sa.and_(J.c.gpus == _lit(0), bp("p_free_slots") > _lit(0)))
    # A not_before beyond the horizon was written by a skewed clock: it does not hold the job back.
    due = sa.or_(J.c.not_before.is_(None), J.c.not_before <= bp("p_now"), J.c.not_before > bp("p_horizon"))
    cand = (sa.select(J.c.id).select_from(J.join(g, g.c.id == J.c.group_id).join(gr, gr.c.id == J.c.grid_id))
            .where(J.c.state == _lit(Q.QUEUED.value), g.c.ready.is_(True), gr.c.paused.is_(False), fits, due, alive)
            .order_by(J.c.priority.desc(), J.c.id).limit(_lit(1))
            .with_for_update(skip_locked=True, of=J))  # (SQLite has no row locks and writes nothing for it)
    if in_grids:
        cand = cand.where(gr.c.name.in_(bp("p_grids", expanding=True)))
    return (J.update().where(J.c.id == cand.scalar_subquery())
            .values(state=_lit(Q.RUNNING.value), attempt=J.c.attempt + _lit(1), worker_id=bp("p_wid"),
                    started_at=bp("p_now"), finished_at=sa.null(), progress=sa.null(), exit_code=sa.null(),
                    reason=sa.null())
            .returning(J.c.id, J.c.attempt, J.c.key, J.c.grid_id, J.c.group_id, J.c.kind, J.c.params,
                       J.c.repeat, J.c.command, J.c.gpus, J.c.cpus, J.c.mem_gb, J.c.from_scratch))


@functools.cache
def claim_recording_attempt(in_grids: bool) -> Any:
    """:func:`claim` that also inserts the attempt row (a data-modifying CTE, PostgreSQL): every
    statement is a round trip to the server, and round trips are most of a claim's time."""
    claimed = claim(in_grids).cte("claimed")
    started = A.insert().from_select(
        ["job_id", "attempt", "worker_id", "started_at"],
        sa.select(claimed.c.id, claimed.c.attempt, bp("p_wid", type_=sa.Integer),
                  bp("p_now", type_=sa.Float))).cte("started")
    return sa.select(claimed).add_cte(started)


@functools.cache
def attempt_start() -> Any:
    return A.insert().values(job_id=bp("p_job"), attempt=bp("p_attempt"), worker_id=bp("p_wid"),
                             started_at=bp("p_now"))


@functools.cache
def attempt_end() -> Any:
    return (A.update().where(A.c.job_id == bp("p_job"), A.c.attempt == bp("p_attempt"))
            .values(ended_at=bp("p_now"), outcome=bp("p_state"), exit_code=bp("p_exit_code"),
                    reason=bp("p_reason")))


@functools.cache
def finish(variant: str) -> Any:
    """End attempt (``p_job``, ``p_attempt``) if it is still the job's running one (else no row).

    ``failed``/``lost``: charged to the job's failures/crashes, requeued with a back-off until its
    budget is spent; ``failed_final``: failed now; ``requeued``: back to the queue, not charged;
    ``ended``: the state ``p_state`` as reported. Returns the job's group, its new state, its
    metrics and whether other groups wait for its group.
    """
    values: dict[str, Any]
    if variant in ("failed", "failed_final", "lost"):
        counter = J.c.crashes if variant == "lost" else J.c.failures
        final = sa.true() if variant == "failed_final" else J.c.failures + J.c.crashes + 1 >= J.c.max_attempts
        values = {counter.name: counter + 1,
                  "state": sa.case((final, Q.FAILED.value), else_=Q.QUEUED.value),
                  "not_before": sa.case((final, None), else_=bp("p_retry_at")),
                  "finished_at": sa.case((final, bp("p_now")), else_=None)}
    elif variant == "requeued":  # drained or interrupted by us: not the job's fault, not charged
        values = {"state": Q.QUEUED.value, "not_before": None, "finished_at": None}
    elif variant == "ended":
        values = {"state": bp("p_state"), "finished_at": bp("p_now"), "not_before": sa.null()}
    else:
        raise ValueError(f"unknown finish variant {variant!r}")
    values.update(worker_id=sa.null(), exit_code=bp("p_exit_code"), reason=bp("p_reason"), cancel_requested=sa.false())
    current = (J.c.id == bp("p_job")) & (J.c.attempt == bp("p_attempt")) & (J.c.state == _lit(Q.RUNNING.value))
    # Spelled out: SQLAlchemy leaves RETURNING columns unqualified, and inside this subquery an
    # unqualified group_id would name group_deps' own column.
    has_dependants = sa.literal_column(
        "EXISTS (SELECT 1 FROM group_deps AS d WHERE d.after_group_id = jobs.group_id)").label("has_dependants")
    return J.update().where(current).values(**values).returning(J.c.group_id, J.c.state, J.c.metrics, has_dependants)


@functools.cache
def finish_recording_attempt(variant: str) -> Any:
    """:func:`finish` that also ends the attempt row in the same statement (PostgreSQL)."""
    finished = finish(variant).cte("finished")
    ended = attempt_end().where(sa.exists(sa.select(finished.c.state))).cte("ended")
    return sa.select(finished).add_cte(ended)


@functools.cache
def next_due() -> Any:
    """When the first backed-off job may run (within the horizon)."""
    return sa.select(sa.func.min(J.c.not_before)).where(
        J.c.state == _lit(Q.QUEUED.value), J.c.not_before > bp("p_now"), J.c.not_before <= bp("p_horizon"))


@functools.cache
def beat() -> Any:
    return W.update().where(W.c.id == bp("p_wid")).values(heartbeat=W.c.heartbeat + 1)


@functools.cache
def group_pending() -> Any:
    """A job of group ``p_group`` that has not succeeded (none: the group is complete)."""
    return sa.select(J.c.id).where(
        J.c.group_id == bp("p_group"),
        J.c.state.in_([Q.QUEUED.value, Q.RUNNING.value, Q.FAILED.value, Q.CANCELLED.value])).limit(1)


@functools.cache
def name_of(table_name: str) -> Any:
    """The name of grid or group ``p_id`` (immutable once created)."""
    table = s.metadata.tables[table_name]
    return sa.select(table.c.name).where(table.c.id == bp("p_id"))
