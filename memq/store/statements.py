"""Every SQL statement the store runs, by name, and the conditions several of them share.

(Over 400 lines on purpose: design.md 2 keeps every statement in one module, so that a change to
the schema or an index is checked against all of its queries in one place.)

The hot path's statements are built once (building one costs more than running it) and take their
values as bind parameters named ``p_*``; constants are written into the SQL as literals, so both
planners can match the partial indexes (schema: ``state = 'queued'``) and no execution binds them.
The others are built per call from their arguments. Statements that need ON CONFLICT take the
backend's ``insert``. Which statement runs where is the backend's choice (memq.store.backend):
PostgreSQL runs the ``*_recording_attempts`` forms, which take a whole batch of claims or of ends
in one statement and write the attempt rows in that statement, and a heartbeat's two statements as
one (``renew_lease_reading_jobs``). SQL that only one database has (COPY, PRAGMA, advisory locks)
stays with its backend; schema changes are in memq.store.migrations.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from memq.store import schema as s
from memq.store.types import WorkerRef

J, W, A, C = s.jobs, s.workers, s.attempts, s.checkpoints
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
    return _incarnation_alive(ref.id, ref.incarnation)


def _incarnation_alive(worker_id: Any, incarnation: Any) -> Any:
    return ((W.c.id == worker_id) & (W.c.incarnation == incarnation) & (W.c.state != _lit(WS.DEAD.value))
            & (W.c.state != _lit(WS.STOPPED.value)))


def jobs_where(ids: Iterable[int] = (), grid: str | None = None, states: Sequence[str] = (),
               reason: str | None = None, keys: Iterable[str] = ()) -> Any:
    """The jobs an operator command or a listing names (every filter given must hold)."""
    cond = sa.true()
    ids, keys = list(ids), list(keys)
    if ids:
        cond &= J.c.id.in_(ids)
    if keys:
        cond &= J.c.key.in_(keys)
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

def _in_claim_order(fits: Any, in_grids: bool, column: Any = J.c.id, limit: Any = None) -> Any:
    """``column`` (the id) of the first queued job (``limit`` jobs; default one) that ``fits``
    admits, in claim order: highest priority first, then submission order; only ready groups of
    unpaused grids (only the grids ``p_grids`` when ``in_grids``), only jobs past their back-off."""
    g, gr = s.groups, s.grids
    # A not_before beyond the horizon was written by a skewed clock: it does not hold the job back.
    due = sa.or_(J.c.not_before.is_(None), J.c.not_before <= bp("p_now"), J.c.not_before > bp("p_horizon"))
    cand = (sa.select(column).select_from(J.join(g, g.c.id == J.c.group_id).join(gr, gr.c.id == J.c.grid_id))
            .where(J.c.state == _lit(Q.QUEUED.value), g.c.ready.is_(True), gr.c.paused.is_(False), fits, due)
            .order_by(J.c.priority.desc(), J.c.id).limit(_lit(1) if limit is None else limit))
    return cand.where(gr.c.name.in_(bp("p_grids", expanding=True))) if in_grids else cand


def _claimable(in_grids: bool, limit: Any = None) -> Any:
    """The ids of the jobs a claim takes: those that fit (``p_min_gpus`` to ``p_free_gpus`` GPUs of
    ``p_gpu_mem`` GB each, a CPU job when ``p_free_slots``, or a share of a GPU: at most ``p_share``
    and ``p_share_mem`` GB of the worker's partly shared GPU, or a whole free GPU's when
    ``p_whole_share``), for worker ``p_wid`` if its incarnation ``p_inc`` is alive, in claim order
    (:func:`_in_claim_order`)."""
    alive = sa.exists().where(_incarnation_alive(bp("p_wid"), bp("p_inc")))
    fits = sa.or_(sa.and_(J.c.gpus > _lit(0), J.c.gpus >= bp("p_min_gpus"), J.c.gpus <= bp("p_free_gpus"),
                          J.c.gpu_mem_gb <= bp("p_gpu_mem")),
                  sa.and_(J.c.gpus == _lit(0), J.c.gpu_share == _lit(0), bp("p_free_slots") > _lit(0)),
                  sa.and_(J.c.gpu_share > _lit(0), sa.or_(
                      sa.and_(J.c.gpu_share <= bp("p_share"), J.c.gpu_mem_gb <= bp("p_share_mem")),
                      sa.and_(bp("p_whole_share") > _lit(0), J.c.gpu_mem_gb <= bp("p_gpu_mem")))))
    return _in_claim_order(fits, in_grids, limit=limit).where(alive)


def _take(chosen: Any) -> Any:
    """The claim's UPDATE of the jobs ``chosen`` names: running on worker ``p_wid`` as a new attempt."""
    return (J.update().where(chosen)
            .values(state=_lit(Q.RUNNING.value), attempt=J.c.attempt + _lit(1), worker_id=bp("p_wid"),
                    started_at=bp("p_now"), finished_at=sa.null(), progress=sa.null(), exit_code=sa.null(),
                    reason=sa.null())
            .returning(J.c.id, J.c.attempt, J.c.key, J.c.grid_id, J.c.group_id, J.c.kind, J.c.params,
                       J.c.repeat, J.c.command, J.c.gpus, J.c.cpus, J.c.mem_gb, J.c.from_scratch,
                       J.c.gpu_share, J.c.gpu_mem_gb, J.c.priority))


@functools.cache
def claim(in_grids: bool) -> Any:
    """Take the next job that fits (:func:`_claimable`) for worker ``p_wid``: a database whose
    writers take turns (SQLite), one job per statement."""
    return _take(J.c.id == _claimable(in_grids).scalar_subquery())


@functools.cache
def first_gpu_job(in_grids: bool) -> Any:
    """How many GPUs the first GPU job in claim order asks for, of the jobs asking for at most
    ``p_most_gpus`` (a worker's hold for a waiting multi-GPU job: memq.worker.pools.hold_for)."""
    return _in_claim_order(sa.and_(J.c.gpus > _lit(0), J.c.gpus <= bp("p_most_gpus")), in_grids, J.c.gpus)


@functools.cache
def claim_recording_attempts(in_grids: bool) -> Any:
    """Take up to ``p_limit`` jobs that fit (:func:`_claimable`) in one statement, passing over jobs
    that concurrent claims have locked, and insert their attempt rows (data-modifying CTEs,
    PostgreSQL); rows in claim order. One statement per batch, not per job: each statement is a
    round trip, and a claim transaction's row locks are held until it commits - a batch claimed one
    job at a time held them across 16 round trips, and the finishes of other workers queued behind
    them (bench/queue_throughput.py). MATERIALIZED: the locking scan runs once, whatever the plan."""
    picked = (_claimable(in_grids, bp("p_limit")).with_for_update(skip_locked=True, of=J)
              .cte("picked").prefix_with("MATERIALIZED"))
    claimed = _take(J.c.id.in_(sa.select(picked.c.id))).cte("claimed")
    started = A.insert().from_select(
        ["job_id", "attempt", "worker_id", "started_at"],
        sa.select(claimed.c.id, claimed.c.attempt, bp("p_wid", type_=sa.Integer),
                  bp("p_now", type_=sa.Float))).cte("started")
    return sa.select(claimed).add_cte(started).order_by(claimed.c.priority.desc(), claimed.c.id)


@functools.cache
def attempt_start() -> Any:
    return A.insert().values(job_id=bp("p_job"), attempt=bp("p_attempt"), worker_id=bp("p_wid"),
                             started_at=bp("p_now"))


@functools.cache
def attempt_end() -> Any:
    return (A.update().where(A.c.job_id == bp("p_job"), A.c.attempt == bp("p_attempt"))
            .values(ended_at=bp("p_now"), outcome=bp("p_state"), exit_code=bp("p_exit_code"),
                    reason=bp("p_reason")))


def _ending(variant: str, state: Any, retry_at: Any, exit_code: Any, reason: Any) -> dict[str, Any]:
    """The job's new values when an attempt ends (see :func:`finish`); the arguments are the
    outcome's reported state, back-off end, exit code and reason."""
    values: dict[str, Any]
    if variant in ("failed", "failed_final", "lost"):
        counter = J.c.crashes if variant == "lost" else J.c.failures
        final = sa.true() if variant == "failed_final" else J.c.failures + J.c.crashes + 1 >= J.c.max_attempts
        values = {counter.name: counter + 1,
                  "state": sa.case((final, Q.FAILED.value), else_=Q.QUEUED.value),
                  "not_before": sa.case((final, None), else_=retry_at),
                  "finished_at": sa.case((final, bp("p_now")), else_=None)}
    elif variant == "requeued":  # drained or interrupted by us: not the job's fault, not charged
        values = {"state": Q.QUEUED.value, "not_before": None, "finished_at": None}
    elif variant == "requeued_alone":  # out of GPU memory beside other jobs: not charged, a GPU of its own
        values = {"state": Q.QUEUED.value, "not_before": None, "finished_at": None, "gpus": 1, "gpu_share": 0.0}
    elif variant == "ended":
        values = {"state": state, "finished_at": bp("p_now"), "not_before": sa.null()}
    else:
        raise ValueError(f"unknown finish variant {variant!r}")
    values.update(worker_id=sa.null(), exit_code=exit_code, reason=reason, cancel_requested=sa.false())
    return values


def _ended(job: Any, attempt: Any, values: dict[str, Any]) -> Any:
    """The finish's UPDATE: attempt (``job``, ``attempt``) if it is still the job's running one."""
    current = (J.c.id == job) & (J.c.attempt == attempt) & (J.c.state == _lit(Q.RUNNING.value))
    # Spelled out: SQLAlchemy leaves RETURNING columns unqualified, and inside this subquery an
    # unqualified group_id would name group_deps' own column.
    has_dependants = sa.literal_column(
        "EXISTS (SELECT 1 FROM group_deps AS d WHERE d.after_group_id = jobs.group_id)").label("has_dependants")
    has_job_dependants = sa.literal_column(
        "EXISTS (SELECT 1 FROM group_job_deps AS d WHERE d.after_job_id = jobs.id)").label("has_job_dependants")
    return J.update().where(current).values(**values).returning(J.c.id, J.c.attempt, J.c.group_id, J.c.state,
                                                                J.c.metrics, has_dependants, has_job_dependants)


@functools.cache
def finish(variant: str) -> Any:
    """End attempt (``p_job``, ``p_attempt``) if it is still the job's running one (else no row).

    ``failed``/``lost``: charged to the job's failures/crashes, requeued with a back-off until its
    budget is spent; ``failed_final``: failed now; ``requeued``: back to the queue, not charged
    (``requeued_alone``: and from now on on a GPU of its own);
    ``ended``: the state ``p_state`` as reported. Returns the job's id, attempt, group, its new
    state, its metrics and whether other groups wait for its group.
    """
    values = _ending(variant, bp("p_state"), bp("p_retry_at"), bp("p_exit_code"), bp("p_reason"))
    return _ended(bp("p_job"), bp("p_attempt"), values)


# The outcomes of one batched finish: an array each (one element per outcome), by the name of the
# array and of the single value in :func:`finish`.
FINISH_ARRAYS = {"p_jobs": ("p_job", sa.Integer), "p_attempts": ("p_attempt", sa.Integer),
                 "p_states": ("p_state", sa.String), "p_exit_codes": ("p_exit_code", sa.Integer),
                 "p_reasons": ("p_reason", sa.Text), "p_retry_ats": ("p_retry_at", sa.Float)}


@functools.cache
def finish_recording_attempts(variant: str) -> Any:
    """:func:`finish` of many attempts in one statement (their outcomes in the arrays of
    :data:`FINISH_ARRAYS`) that also ends their attempt rows (PostgreSQL). Returns a row per attempt
    it ended, with the outcome's state as ``outcome``."""
    o = (sa.func.unnest(*(bp(name, type_=sa.ARRAY(kind)) for name, (_, kind) in FINISH_ARRAYS.items()))
         .table_valued("job", "attempt", "state", "exit_code", "reason", "retry_at").render_derived(name="o"))
    finished = (_ended(o.c.job, o.c.attempt, _ending(variant, o.c.state, o.c.retry_at, o.c.exit_code, o.c.reason))
                .returning(o.c.state.label("outcome"), J.c.exit_code, J.c.reason).cte("finished"))
    ended = (A.update().where(A.c.job_id == finished.c.id, A.c.attempt == finished.c.attempt)
             .values(ended_at=bp("p_now"), outcome=finished.c.outcome, exit_code=finished.c.exit_code,
                     reason=finished.c.reason).cte("ended"))
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


# -- submit ---------------------------------------------------------------------------------------

def add_grid(insert: Any, name: str, source: str | None, now: float) -> Any:
    """``insert``: the backend's INSERT (ON CONFLICT is spelled per dialect)."""
    return (insert(s.grids).values(name=name, paused=False, source=source, created_at=now)
            .on_conflict_do_nothing(index_elements=["name"]))


def set_fingerprint(grid: int, fingerprint: str | None, jobs: int) -> Any:
    """What the grid's last submit expanded (memq.cli.lean.fingerprint), and how many jobs it had then."""
    return s.grids.update().where(s.grids.c.id == grid).values(fingerprint=fingerprint, fingerprint_jobs=jobs)


def lock_grid(name: str) -> Any:
    """The grid's id, its row locked until commit where the database locks rows (SQLite: its
    writers are serialised anyway) - concurrent submits of one grid take turns."""
    return sa.select(s.grids.c.id).where(s.grids.c.name == name).with_for_update()


def add_groups(insert: Any) -> Any:
    """Run with one row per group: ``grid_id``, ``name``, ``ready``."""
    return insert(s.groups).on_conflict_do_nothing(index_elements=["grid_id", "name"])


def group_ids(grid: int) -> Any:
    """(name, id) of a grid's groups."""
    return sa.select(s.groups.c.name, s.groups.c.id).where(s.groups.c.grid_id == grid)


def clear_dependencies(groups: list[int]) -> Any:
    return s.group_deps.delete().where(s.group_deps.c.group_id.in_(groups))


def add_dependencies() -> Any:
    """Run with one row per edge: ``group_id``, ``after_group_id``."""
    return s.group_deps.insert()


def clear_job_dependencies(groups: list[int]) -> Any:
    return s.group_job_deps.delete().where(s.group_job_deps.c.group_id.in_(groups))


def add_job_dependencies() -> Any:
    """Run with one row per edge: ``group_id``, ``after_job_id``."""
    return s.group_job_deps.insert()


def job_ids_of(keys: list[str]) -> Any:
    """(key, id) of the jobs with these keys."""
    return sa.select(J.c.key, J.c.id).where(J.c.key.in_(keys))


def job_hashes(grid: int) -> Any:
    """(key, spec_hash) of a grid's jobs."""
    return sa.select(J.c.key, J.c.spec_hash).where(J.c.grid_id == grid)


@functools.cache
def add_new_jobs(insert: Any, columns: tuple[str, ...]) -> Any:
    """Job rows of ``columns`` (bound in the table's column order); keys already present are left."""
    return insert(J).values({c: bp(c) for c in columns}).on_conflict_do_nothing(index_elements=["key"])


def _blocked_groups() -> Any:
    """Groups with an `after` group not fully succeeded, or a job they wait for (group_job_deps) not succeeded."""
    d, jd = s.group_deps, s.group_job_deps
    unfinished = sa.exists().where(J.c.group_id == d.c.after_group_id, J.c.state != Q.SUCCEEDED.value)
    unfinished_job = sa.exists().where(J.c.id == jd.c.after_job_id, J.c.state != Q.SUCCEEDED.value)
    return sa.union(sa.select(d.c.group_id).where(unfinished), sa.select(jd.c.group_id).where(unfinished_job))


def refresh_ready(grid: int) -> Any:
    """Recompute `groups.ready` for one grid."""
    g = s.groups
    return g.update().where(g.c.grid_id == grid).values(ready=~g.c.id.in_(_blocked_groups()))


def refresh_followers(job: int) -> Any:
    """Recompute `groups.ready` for the groups that wait for job ``job`` only (a finish on the
    worker's path: not every group of a grid of many `each:` groups)."""
    g, d, jd = s.groups, s.group_deps, s.group_job_deps
    followers = sa.select(jd.c.group_id).where(jd.c.after_job_id == job)
    waits = sa.exists().where(d.c.group_id == g.c.id, J.c.group_id == d.c.after_group_id,
                              J.c.state != Q.SUCCEEDED.value)
    waits_job = sa.exists().where(jd.c.group_id == g.c.id, J.c.id == jd.c.after_job_id, J.c.state != Q.SUCCEEDED.value)
    return g.update().where(g.c.id.in_(followers)).values(ready=~(waits | waits_job))


def grid_of_group(group: int) -> Any:
    return sa.select(s.groups.c.grid_id).where(s.groups.c.id == group)


# -- a running attempt ----------------------------------------------------------------------------

def running_attempt(job_id: int, attempt: int) -> Any:
    """The job's metrics if (job_id, attempt) is its running attempt (no row: it has moved on)."""
    return sa.select(J.c.metrics).where(J.c.id == job_id, J.c.attempt == attempt, J.c.state == Q.RUNNING.value)


def set_attempt_values(job_id: int, attempt: int, values: dict[str, Any]) -> Any:
    """Progress or metrics of one attempt."""
    return J.update().where(J.c.id == job_id, J.c.attempt == attempt).values(**values)


def set_metrics(job_id: int, metrics: dict[str, Any]) -> Any:
    return J.update().where(J.c.id == job_id).values(metrics=metrics)


def last_attempt(job_id: int) -> Any:
    return sa.select(J.c.attempt).where(J.c.id == job_id)


# -- workers --------------------------------------------------------------------------------------

def worker_by_name(name: str) -> Any:
    return sa.select(W).where(W.c.name == name)


def add_worker(name: str, values: dict[str, Any]) -> Any:
    return W.insert().values(name=name, heartbeat=0, incarnation=1, **values).returning(W.c.id)


def take_over_worker(worker_id: int, incarnation: int, values: dict[str, Any]) -> Any:
    """A new incarnation takes the row over; its counter moves, so no observer mistakes it for stalled."""
    return (W.update().where(W.c.id == worker_id)
            .values(incarnation=incarnation, heartbeat=W.c.heartbeat + 1, **values))


def renew_lease(ref: WorkerRef, now: float) -> Any:
    """One heartbeat of a live incarnation; returns whether it is asked to drain (no row: it is dead)."""
    return (W.update().where(worker_alive(ref)).values(heartbeat=W.c.heartbeat + 1, heartbeat_at=now)
            .returning(W.c.drain))


def held_jobs(worker_id: int) -> Any:
    """(id, attempt, cancel_requested) of the jobs the table says this worker runs."""
    return sa.select(J.c.id, J.c.attempt, J.c.cancel_requested).where(
        J.c.worker_id == worker_id, J.c.state == Q.RUNNING.value)


@functools.cache
def renew_lease_reading_jobs() -> Any:
    """:func:`renew_lease` of incarnation ``p_incarnation`` of worker ``p_wid`` and :func:`held_jobs`
    in one statement (PostgreSQL: an UPDATE in a WITH). No row: the incarnation is dead; one row
    whose id is NULL: alive, and the table gives it no job; else one row per job it runs."""
    alive = _incarnation_alive(bp("p_wid", type_=sa.Integer), bp("p_incarnation", type_=sa.Integer))
    renewed = (W.update().where(alive)
               .values(heartbeat=W.c.heartbeat + _lit(1), heartbeat_at=bp("p_now", type_=sa.Float))
               .returning(W.c.drain).cte("renewed"))
    held = (J.c.worker_id == bp("p_wid", type_=sa.Integer)) & (J.c.state == _lit(Q.RUNNING.value))
    return (sa.select(renewed.c.drain, J.c.id, J.c.attempt, J.c.cancel_requested)
            .select_from(renewed.outerjoin(J, held)))


def worker_heartbeats() -> Any:
    """(id, heartbeat counter, state, running jobs) of every worker that could hold jobs."""
    live = [WS.ACTIVE.value, WS.DRAINING.value, WS.QUARANTINED.value]
    running = (sa.select(J.c.worker_id, sa.func.count().label("n")).where(RUNNING_ON_A_WORKER)
               .group_by(J.c.worker_id).subquery())
    return (sa.select(W.c.id, W.c.heartbeat, W.c.state, sa.func.coalesce(running.c.n, 0))
            .select_from(W.outerjoin(running, running.c.worker_id == W.c.id)).where(W.c.state.in_(live)))


def declare_dead(worker_id: int, seen_heartbeat: int, reason: str) -> Any:
    """Only if its counter has not moved since it was seen (a worker that beat since is alive)."""
    return (W.update().where(W.c.id == worker_id, W.c.heartbeat == seen_heartbeat, W.c.state != WS.DEAD.value)
            .values(state=WS.DEAD.value, reason=reason))


def set_sharing(worker_id: int, sharing: dict[str, Any] | None) -> Any:
    return W.update().where(W.c.id == worker_id).values(sharing=sharing)


def set_worker_state(worker_id: int, state: str, reason: str | None) -> Any:
    return W.update().where(W.c.id == worker_id).values(state=state, reason=reason)


def request_drain(name: str) -> Any:
    return (W.update().where(W.c.name == name, W.c.state.notin_([WS.DEAD.value, WS.STOPPED.value]))
            .values(drain=True))


# -- checkpoints and artifacts --------------------------------------------------------------------

def put_checkpoint(insert: Any, job_id: int, kind: str, path: str, values: dict[str, Any]) -> Any:
    """Register a file once per (job, kind, path); registering it again updates it."""
    return (insert(C).values(job_id=job_id, kind=kind, path=path, **values)
            .on_conflict_do_update(index_elements=["job_id", "kind", "path"], set_=values))


def forget_checkpoint(job_id: int, kind: str, path: str) -> Any:
    return C.delete().where(C.c.job_id == job_id, C.c.kind == kind, C.c.path == path)


def checkpoints(job_ids: list[int], grid: str | None, kind: str | None) -> Any:
    """Registered files (every filter given must hold), best metric first within a job."""
    cond = sa.true()
    if job_ids:
        cond &= C.c.job_id.in_(job_ids)
    if grid:
        cond &= C.c.job_id.in_(sa.select(J.c.id).join(s.grids, s.grids.c.id == J.c.grid_id)
                               .where(s.grids.c.name == grid))
    if kind:
        cond &= C.c.kind == kind
    return sa.select(C).where(cond).order_by(C.c.job_id, C.c.metric.desc(), C.c.id)


def mark_synced(checkpoint_id: int, synced_path: str | None) -> Any:
    return C.update().where(C.c.id == checkpoint_id).values(synced_path=synced_path)


# -- operator commands ----------------------------------------------------------------------------

def cancel_queued(where: Any, now: float) -> Any:
    return (J.update().where(where, J.c.state == Q.QUEUED.value)
            .values(state=Q.CANCELLED.value, finished_at=now, reason="cancelled"))


def cancel_running(where: Any) -> Any:
    """Ask the workers of running jobs to stop them (their next heartbeat learns it)."""
    return J.update().where(where, J.c.state == Q.RUNNING.value).values(cancel_requested=True)


def grids_of_jobs(where: Any) -> Any:
    return sa.select(J.c.grid_id).where(where).distinct()


def requeue(where: Any, from_scratch: bool) -> Any:
    """Back to the queue with a fresh attempt budget."""
    return J.update().where(where).values(state=Q.QUEUED.value, failures=0, crashes=0, reason=None, exit_code=None,
                                          not_before=None, finished_at=None, from_scratch=from_scratch)


def set_paused(grid: str, paused: bool) -> Any:
    return s.grids.update().where(s.grids.c.name == grid).values(paused=paused)


# -- reads for display (what `memq status` reads: memq.store.overview) -------------------------

def grids() -> Any:
    gr = s.grids
    return sa.select(gr.c.id, gr.c.name, gr.c.paused, gr.c.source, gr.c.created_at).order_by(gr.c.id)


def jobs(where: Any, group: str | None, limit: int | None, newest_first: bool) -> Any:
    """Jobs with their grid and group names, in submission order (or newest first)."""
    if group:
        where &= s.groups.c.name == group
    columns = [J.c.id, J.c.key, s.grids.c.name.label("grid"), s.groups.c.name.label("group"), J.c.kind,
               J.c.params, J.c.repeat, J.c.state, J.c.attempt, J.c.failures, J.c.crashes, J.c.reason,
               J.c.exit_code, J.c.priority, J.c.gpus, J.c.gpu_share, J.c.gpu_mem_gb, J.c.cpus, J.c.mem_gb,
               J.c.max_attempts,
               J.c.submitted_at, J.c.started_at, J.c.finished_at, J.c.progress, J.c.metrics,
               J.c.worker_id, J.c.command, J.c.cancel_requested]
    return (sa.select(*columns)
            .select_from(J.join(s.grids, s.grids.c.id == J.c.grid_id).join(s.groups, s.groups.c.id == J.c.group_id))
            .where(where).order_by(J.c.id.desc() if newest_first else J.c.id).limit(limit))


def attempts(job_id: int) -> Any:
    return (sa.select(A.c.attempt, A.c.started_at, A.c.ended_at, A.c.outcome, A.c.exit_code, A.c.reason,
                      W.c.name.label("worker"), W.c.host)
            .select_from(A.outerjoin(W, W.c.id == A.c.worker_id)).where(A.c.job_id == job_id).order_by(A.c.attempt))


# -- integrity ------------------------------------------------------------------------------------

def duplicate_keys() -> Any:
    return sa.select(J.c.key).group_by(J.c.key).having(sa.func.count() > 1)


def running_without_worker() -> Any:
    return sa.select(sa.func.count()).select_from(J).where(J.c.state == Q.RUNNING.value, J.c.worker_id.is_(None))
