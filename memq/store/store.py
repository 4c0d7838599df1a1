"""The Store: every read and write of the job table, each one short transaction.

All SQL lives here. Callers never see a connection; they get plain values from
:mod:`memq.store.types` or row dicts for display. Writes made on behalf of an attempt name
``(job_id, attempt)`` and are refused (return False / raise Fenced) when the job has moved on.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from memq.errors import UserError
from memq.files import write_text_atomically
from memq.store import schema as s
from memq.store.backends import Backend
from memq.store.types import (
    Capacity,
    Claim,
    GridSpec,
    HeartbeatReply,
    Outcome,
    Running,
    SubmitResult,
    WorkerRef,
)

VERSION_FILE = "queue.version"
MAX_BACKOFF = 3600.0  # a not_before further ahead than this is a skewed clock: ignore it
_CHUNK = 2000

J = s.jobs
Q = s.JobState
# A job has a worker exactly while it runs. This is the condition of the running jobs' index
# (schema: ix_jobs_running), so a query for running jobs says it too, and the planners use that index.
RUNNING_ON_A_WORKER = J.c.worker_id.is_not(None)


class WorkerGone(Exception):
    """This worker incarnation was declared dead (or replaced): it must stand down."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """The job table of one memq root."""

    def __init__(self, backend: Backend, root: Path) -> None:
        self.backend = backend
        self.root = root
        self.version_path = root / VERSION_FILE
        self._pg = backend.dialect == "postgresql"
        self._names: dict[tuple[str, int], str] = {}
        self._stmts: dict[str, Any] = {}
        # Seconds until the first backed-off job is due, as the last empty claim saw it (None:
        # no job is waiting out a back-off). Lets idle workers sleep instead of polling.
        self.retry_in: float | None = None

    # -- plumbing ---------------------------------------------------------------------------------

    def _write(self, fn: Any) -> Any:
        result = self.backend.run(fn, write=True)
        self.bump_version()
        return result

    def _read(self, fn: Any) -> Any:
        return self.backend.run(fn, write=False)

    def bump_version(self) -> None:
        """Tell idle readers something changed (atomic rename: a new inode every time). A hint
        only, so not fsynced: a lost bump costs an idle worker one back-off period."""
        write_text_atomically(self.version_path, secrets.token_hex(8), durable=False)

    def version(self) -> tuple[int, int, int] | None:
        """A cheap fingerprint of the version file; changes whenever the store changed."""
        try:
            st = self.version_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql if self._pg else sqlite).insert(table)

    def initialize(self) -> None:
        """Create the schema if missing (safe to race), and check or upgrade its version."""

        def tx(conn: Connection) -> None:
            if self._pg:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7405321)"))
            s.metadata.create_all(conn, checkfirst=True)
            conn.execute(self._insert(s.meta).values(key="schema_version", value=str(s.SCHEMA_VERSION))
                         .on_conflict_do_nothing(index_elements=["key"]))
            self._upgrade(conn)

        self._write(tx)

    def exists(self) -> bool:
        """Whether the memq tables are there (an older schema is upgraded first)."""

        def tx(conn: Connection) -> int | None:
            return self._schema_version(conn) if sa.inspect(conn).has_table("meta") else None

        found = self._read(tx)
        if found is None:
            return False
        if found != s.SCHEMA_VERSION:
            self.initialize()
        return True

    @staticmethod
    def _schema_version(conn: Connection) -> int:
        found = conn.execute(sa.select(s.meta.c.value).where(s.meta.c.key == "schema_version")).scalar()
        return s.SCHEMA_VERSION if found is None else int(found)

    def _upgrade(self, conn: Connection) -> None:
        """Bring a version-1 database to this schema: the job indexes that changed on every claim and
        finish are replaced, attempts are keyed by (job, attempt). Newer versions are an error."""
        found = self._schema_version(conn)
        if found == s.SCHEMA_VERSION:
            return
        if found != 1:
            raise UserError(f"database schema version {found}, this memq needs {s.SCHEMA_VERSION}",
                            hint="use the memq version that created it")
        for name in s.RETIRED_INDEXES:
            conn.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))
        for index in s.jobs.indexes:
            index.create(conn, checkfirst=True)
        rows = [dict(r._mapping) for r in conn.execute(sa.select(*s.attempts.c))]  # (v1 has these too)
        conn.execute(sa.text("DROP TABLE attempts"))
        s.attempts.create(conn)
        if rows:
            conn.execute(s.attempts.insert(), rows)
        conn.execute(s.meta.update().where(s.meta.c.key == "schema_version").values(value=str(s.SCHEMA_VERSION)))

    # -- submit -----------------------------------------------------------------------------------

    def submit(self, grid: GridSpec) -> SubmitResult:
        """Insert the grid's jobs; keys already present are left as they are (idempotent)."""
        now = time.time()

        def tx(conn: Connection) -> SubmitResult:
            conn.execute(self._insert(s.grids).values(name=grid.name, paused=False, source=grid.source,
                                                      created_at=now)
                         .on_conflict_do_nothing(index_elements=["name"]))
            grid_id = conn.execute(sa.select(s.grids.c.id).where(s.grids.c.name == grid.name)).scalar_one()
            conn.execute(self._insert(s.groups).on_conflict_do_nothing(index_elements=["grid_id", "name"]),
                         [{"grid_id": grid_id, "name": g.name, "ready": True} for g in grid.groups])
            group_ids = dict(conn.execute(sa.select(s.groups.c.name, s.groups.c.id)
                                          .where(s.groups.c.grid_id == grid_id)).all())
            ours = [group_ids[g.name] for g in grid.groups]
            conn.execute(s.group_deps.delete().where(s.group_deps.c.group_id.in_(ours)))
            edges = [{"group_id": group_ids[g.name], "after_group_id": group_ids[a]}
                     for g in grid.groups for a in g.after]
            if edges:
                conn.execute(s.group_deps.insert(), edges)
            known = dict(conn.execute(sa.select(J.c.key, J.c.spec_hash).where(J.c.grid_id == grid_id)).all())
            fresh = [j for j in grid.jobs if j.key not in known]
            edited = sum(1 for j in grid.jobs if j.key in known and known[j.key] != j.spec_hash)
            rows = [{
                "key": j.key, "grid_id": grid_id, "group_id": group_ids[j.group], "kind": j.kind,
                "params": j.params, "repeat": j.repeat, "command": j.command, "spec_hash": j.spec_hash,
                "gpus": j.gpus, "cpus": j.cpus, "mem_gb": j.mem_gb, "priority": j.priority,
                "max_attempts": j.max_attempts, "state": Q.QUEUED.value, "attempt": 0, "failures": 0,
                "crashes": 0, "cancel_requested": False, "from_scratch": False, "submitted_at": now,
            } for j in fresh]
            added = self._insert_new(conn, rows)
            self._refresh_ready(conn, grid_id)
            return SubmitResult(grid.name, added, len(grid.jobs) - len(fresh), edited)

        return self._write(tx)

    def _insert_new(self, conn: Connection, rows: list[dict[str, Any]]) -> int:
        """Insert jobs whose key is new; returns how many this transaction inserted (a concurrent
        submit of the same grid inserts each key once between them)."""
        if not self._pg:
            insert = self._insert(J).on_conflict_do_nothing(index_elements=["key"]).returning(J.c.id)
            return sum(len(conn.execute(insert, rows[i:i + _CHUNK]).all()) for i in range(0, len(rows), _CHUNK))
        if not rows:
            return 0
        # On PostgreSQL the rows go in with COPY, psycopg's bulk path (executemany spent ~8 s of
        # Python per 100,000 jobs), into a temporary table that takes ids from the jobs' sequence in
        # submission order; one INSERT ... SELECT then moves the keys nobody inserted meanwhile.
        from psycopg import sql

        columns = list(rows[0])
        json_columns = {c.name for c in J.c if isinstance(c.type, sa.JSON)}
        conn.execute(sa.text("CREATE TEMPORARY TABLE new_jobs (LIKE jobs INCLUDING DEFAULTS) ON COMMIT DROP"))
        copy_sql = sql.SQL("COPY new_jobs ({}) FROM STDIN").format(sql.SQL(", ").join(map(sql.Identifier, columns)))
        new = sa.table("new_jobs", *(sa.column(c) for c in ["id", *columns]))
        move = (postgresql.insert(J).from_select(["id", *columns], sa.select(*new.c).order_by(new.c.id))
                .on_conflict_do_nothing(index_elements=["key"]))
        with conn.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
            with cursor.copy(copy_sql) as copy:
                for row in rows:
                    copy.write_row([json.dumps(v) if c in json_columns and v is not None else v
                                    for c, v in row.items()])
            added = cursor.execute(str(move.compile(dialect=conn.dialect))).rowcount
        if added:
            conn.execute(sa.text("ANALYZE jobs"))  # fresh statistics, or claims plan a full scan
        return added

    @staticmethod
    def _refresh_ready(conn: Connection, grid_id: int) -> None:
        """Recompute `groups.ready` for one grid: every `after` group fully succeeded."""
        g, d = s.groups, s.group_deps
        unfinished = sa.exists().where(J.c.group_id == d.c.after_group_id, J.c.state != Q.SUCCEEDED.value)
        blocked = sa.select(d.c.group_id).where(unfinished)
        conn.execute(g.update().where(g.c.grid_id == grid_id).values(ready=~g.c.id.in_(blocked)))

    def _group_succeeded(self, conn: Connection, group_id: int) -> bool:
        """A job of a group others are `after` succeeded: if the group is complete, wake them."""
        if conn.execute(self._stmt("group_pending"), {"p_group": group_id}).first() is not None:
            return False
        grid_id = conn.execute(sa.select(s.groups.c.grid_id).where(s.groups.c.id == group_id)).scalar_one()
        self._refresh_ready(conn, grid_id)
        return True

    # -- the worker's hot path --------------------------------------------------------------------

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
            accepted, wake = [], False
            for outcome in done:
                ok, woke = self._finish(conn, outcome, now)
                accepted.append(ok)
                wake = wake or woke
            claims: list[Claim] = []
            while len(claims) < limit and not capacity.empty:
                claim = self._claim_one(conn, worker, capacity, now, beat=not done and not claims)
                if claim is None:
                    break
                claims.append(claim)
            return accepted, claims, wake

        accepted, claims, wake = self.backend.run(tx, write=True)
        if wake:
            self.bump_version()
        return accepted, claims

    def _stmt(self, name: str) -> Any:
        """Statements of the hot path, built once (building them costs more than running them)."""
        if name not in self._stmts:
            self._stmts[name] = _build_statement(name, self._pg)
        return self._stmts[name]

    def _first(self, conn: Connection, name: str, params: dict[str, Any]) -> Any:
        """The first row of a hot-path statement. On PostgreSQL its compiled SQL goes straight to
        psycopg, in the same transaction: SQLAlchemy's per-execution work was a third of a claim's
        CPU. Driver errors are raised as SQLAlchemy's (and a lost connection is invalidated), so
        retries and reconnects work as for any other statement."""
        if not self._pg or name == "claim_in_grids":  # (an expanding IN list needs SQLAlchemy)
            return conn.execute(self._stmt(name), params).first()
        import psycopg
        from psycopg.rows import namedtuple_row

        key = "sql:" + name
        if key not in self._stmts:
            compiled = self._stmt(name).compile(dialect=conn.dialect)
            constants = {k: v for k, v in compiled.params.items() if not k.startswith("p_")}
            self._stmts[key] = (str(compiled), constants)
        sql, constants = self._stmts[key]
        values = {**constants, **params}
        driver = conn.connection.driver_connection
        try:
            with driver.cursor(row_factory=namedtuple_row) as cursor:  # type: ignore[union-attr]
                return cursor.execute(sql, values).fetchone()
        except psycopg.Error as exc:
            if conn.dialect.is_disconnect(exc, driver, None):
                conn.invalidate(exc)
            raise sa.exc.DBAPIError.instance(sql, values, exc, psycopg.Error) from exc

    def _claim_one(self, conn: Connection, worker: WorkerRef, cap: Capacity, now: float, *,
                   beat: bool) -> Claim | None:
        params: dict[str, Any] = {"p_wid": worker.id, "p_inc": worker.incarnation, "p_free_gpus": cap.gpus,
                                  "p_free_slots": cap.slots, "p_now": now, "p_horizon": now + MAX_BACKOFF}
        if cap.grids:
            params["p_grids"] = list(cap.grids)
        row = self._first(conn, "claim_in_grids" if cap.grids else "claim", params)
        if row is None:
            due = conn.execute(self._stmt("next_due"), params).scalar()
            self.retry_in = None if due is None else max(due - now, 0.0)
            return None
        if beat:
            # A claim from idle is a sign of life: observers must not mistake an idle worker's old
            # counter, unchanged for hours, for a stalled worker that now holds a job. (A worker
            # that just finished a job was heartbeating while it ran.)
            conn.execute(self._stmt("beat"), {"p_wid": worker.id})
        if not self._pg:  # PostgreSQL's claim statement records the attempt itself
            conn.execute(self._stmt("attempt_start"), {"p_job": row.id, "p_attempt": row.attempt,
                                                       "p_wid": worker.id, "p_now": now})
        return Claim(job_id=row.id, attempt=row.attempt, key=row.key, grid=self._name(conn, s.grids, row.grid_id),
                     group=self._name(conn, s.groups, row.group_id),
                     kind=row.kind, params=row.params, repeat=row.repeat, command=row.command,
                     gpus=row.gpus, cpus=row.cpus, mem_gb=row.mem_gb, from_scratch=row.from_scratch)

    def _name(self, conn: Connection, table: sa.Table, row_id: int) -> str:
        """Grid and group names by id (immutable once created, so cached)."""
        key = (table.name, row_id)
        if key not in self._names:
            self._names[key] = conn.execute(sa.select(table.c.name).where(table.c.id == row_id)).scalar_one()
        return self._names[key]

    def finish(self, outcome: Outcome) -> bool:
        """Record how an attempt ended; False if the attempt had been superseded (fenced)."""
        now = time.time()
        accepted, wake = self.backend.run(lambda conn: self._finish(conn, outcome, now), write=True)
        if wake:
            self.bump_version()
        return accepted

    def _finish(self, conn: Connection, o: Outcome, now: float) -> tuple[bool, bool]:
        """Apply an outcome; returns (accepted, whether some job may have become claimable)."""
        variant = o.state if o.state in ("failed", "failed_final", "lost", "requeued") else "ended"
        params = {"p_job": o.job_id, "p_attempt": o.attempt, "p_now": now, "p_state": o.state.removesuffix("_final"),
                  "p_exit_code": o.exit_code, "p_reason": o.reason, "p_retry_at": now + min(o.backoff, MAX_BACKOFF)}
        row = self._first(conn, f"finish_{variant}", params)
        if row is None:
            return False, False
        if not self._pg:  # PostgreSQL's finish statement ends the attempt itself
            conn.execute(self._stmt("attempt_end"), params)
        if o.metrics:
            merged = {**(row.metrics or {}), **o.metrics}
            conn.execute(J.update().where(J.c.id == o.job_id).values(metrics=merged))
        if row.state == Q.SUCCEEDED.value and row.has_dependants:
            return True, self._group_succeeded(conn, row.group_id)
        return True, row.state == Q.QUEUED.value

    def update_attempt(self, job_id: int, attempt: int, *, progress: dict[str, Any] | None = None,
                       metrics: dict[str, Any] | None = None) -> bool:
        """Progress or metrics from a running attempt; False if it has been superseded."""

        def tx(conn: Connection) -> bool:
            row = conn.execute(sa.select(J.c.metrics).where(
                J.c.id == job_id, J.c.attempt == attempt, J.c.state == Q.RUNNING.value)).first()
            if row is None:
                return False
            values: dict[str, Any] = {}
            if progress is not None:
                values["progress"] = progress
            if metrics:
                values["metrics"] = {**(row.metrics or {}), **metrics}
            if values:
                conn.execute(J.update().where(J.c.id == job_id, J.c.attempt == attempt).values(**values))
            return True

        return self.backend.run(tx, write=True)

    # -- checkpoints ------------------------------------------------------------------------------

    def register_checkpoint(self, job_id: int, attempt: int, *, path: str, host: str, size: int, sha256: str,
                            metric: float | None, step: int | None, kind: str = "checkpoint") -> bool:
        """Record a checkpoint file of a running attempt (fenced); re-registering a path updates it."""
        c = s.checkpoints
        now = time.time()

        def tx(conn: Connection) -> bool:
            current = conn.execute(sa.select(J.c.id).where(J.c.id == job_id, J.c.attempt == attempt,
                                                           J.c.state == Q.RUNNING.value)).first()
            if current is None:
                return False
            values = {"attempt": attempt, "host": host, "size": size, "sha256": sha256, "metric": metric,
                      "step": step, "synced_path": None, "created_at": now}
            conn.execute(self._insert(c).values(job_id=job_id, kind=kind, path=path, **values)
                         .on_conflict_do_update(index_elements=["job_id", "kind", "path"], set_=values))
            return True

        return self.backend.run(tx, write=True)

    def register_artifact(self, job_id: int, *, kind: str, path: str, host: str, size: int, sha256: str,
                          metric: float | None = None, step: int | None = None) -> None:
        """Record a file made from a finished job (a soup, predictions) under its last attempt."""
        c = s.checkpoints
        now = time.time()

        def tx(conn: Connection) -> None:
            attempt = conn.execute(sa.select(J.c.attempt).where(J.c.id == job_id)).scalar_one()
            values = {"attempt": attempt, "host": host, "size": size, "sha256": sha256, "metric": metric,
                      "step": step, "synced_path": path, "created_at": now}
            conn.execute(self._insert(c).values(job_id=job_id, kind=kind, path=path, **values)
                         .on_conflict_do_update(index_elements=["job_id", "kind", "path"], set_=values))

        self.backend.run(tx, write=True)

    def unregister_checkpoint(self, job_id: int, attempt: int, path: str, kind: str = "checkpoint") -> bool:
        """Forget a checkpoint file the attempt deleted (fenced)."""
        c = s.checkpoints

        def tx(conn: Connection) -> bool:
            current = conn.execute(sa.select(J.c.id).where(J.c.id == job_id, J.c.attempt == attempt,
                                                           J.c.state == Q.RUNNING.value)).first()
            if current is None:
                return False
            conn.execute(c.delete().where(c.c.job_id == job_id, c.c.kind == kind, c.c.path == path))
            return True

        return self.backend.run(tx, write=True)

    def checkpoints(self, *, job_ids: Iterable[int] = (), grid: str | None = None,
                    kind: str | None = None) -> list[dict[str, Any]]:
        c = s.checkpoints
        cond = sa.true()
        job_ids = list(job_ids)
        if job_ids:
            cond &= c.c.job_id.in_(job_ids)
        if grid:
            cond &= c.c.job_id.in_(sa.select(J.c.id).join(s.grids, s.grids.c.id == J.c.grid_id)
                                   .where(s.grids.c.name == grid))
        if kind:
            cond &= c.c.kind == kind
        query = sa.select(c).where(cond).order_by(c.c.job_id, c.c.metric.desc(), c.c.id)
        return self._read(lambda conn: [dict(r._mapping) for r in conn.execute(query)])

    def mark_synced(self, checkpoint_id: int, synced_path: str | None) -> None:
        c = s.checkpoints
        self.backend.run(lambda conn: conn.execute(c.update().where(c.c.id == checkpoint_id)
                                                   .values(synced_path=synced_path)), write=True)

    # -- workers ----------------------------------------------------------------------------------

    def register_worker(self, name: str, host: str, pid: int, boot: str, gpus: list[int], slots: int,
                        lease: float) -> WorkerRef:
        """Register a worker by name; a new incarnation of a known name takes over its row.

        Jobs still marked running under an earlier incarnation are lost with it and requeued.
        Refused while the earlier incarnation provably still runs on this host.
        """
        now = time.time()
        w = s.workers

        def tx(conn: Connection) -> tuple[WorkerRef, bool]:
            old = conn.execute(sa.select(w).where(w.c.name == name)).first()
            values = {"host": host, "pid": pid, "boot": boot, "gpus": gpus, "slots": slots, "lease": lease,
                      "state": s.WorkerState.ACTIVE.value, "reason": None, "drain": False,
                      "heartbeat_at": now, "started_at": now}
            if old is None:
                wid = conn.execute(w.insert().values(name=name, heartbeat=0, incarnation=1, **values)
                                   .returning(w.c.id)).scalar_one()
                return WorkerRef(wid, 1), False
            if (old.state not in (s.WorkerState.DEAD.value, s.WorkerState.STOPPED.value)
                    and old.host == host and old.boot == boot and old.pid != pid and _pid_alive(old.pid)):
                raise UserError(f"a worker named {name!r} already runs on this host (pid {old.pid})",
                                hint="give this one another --name")
            requeued = self._requeue_worker_jobs(conn, old.id, now)
            conn.execute(w.update().where(w.c.id == old.id)
                         .values(incarnation=old.incarnation + 1, heartbeat=w.c.heartbeat + 1, **values))
            return WorkerRef(old.id, old.incarnation + 1), bool(requeued)

        ref, requeued = self.backend.run(tx, write=True)
        if requeued:  # a new worker wakes nobody, but its last life's jobs are claimable again
            self.bump_version()
        return ref

    @staticmethod
    def _alive(ref: WorkerRef) -> Any:
        w = s.workers
        return ((w.c.id == ref.id) & (w.c.incarnation == ref.incarnation)
                & w.c.state.notin_([s.WorkerState.DEAD.value, s.WorkerState.STOPPED.value]))

    def heartbeat(self, ref: WorkerRef, running: Sequence[Running]) -> HeartbeatReply:
        """Renew the leases of all this worker's jobs with one write; learn what was fenced.

        ``running`` is every attempt the worker holds; a job the table gives this worker that is not
        among them was claimed by a transaction whose reply never arrived (the connection broke as it
        committed): it goes back to the queue, uncharged."""
        now = time.time()
        w = s.workers
        woke = False

        def tx(conn: Connection) -> HeartbeatReply:
            nonlocal woke
            woke = False  # (a retried transaction starts over)
            row = conn.execute(w.update().where(self._alive(ref))
                               .values(heartbeat=w.c.heartbeat + 1, heartbeat_at=now)
                               .returning(w.c.drain)).first()
            if row is None:
                return HeartbeatReply(alive=False, fenced=[(r.job_id, r.attempt) for r in running])
            current = {(r.id, r.attempt): r.cancel_requested for r in conn.execute(
                sa.select(J.c.id, J.c.attempt, J.c.cancel_requested)
                .where(J.c.worker_id == ref.id, J.c.state == Q.RUNNING.value))}
            reply = HeartbeatReply(alive=True, drain=row.drain)
            held = {(r.job_id, r.attempt) for r in running}
            for job_id, attempt in sorted(set(current) - held):
                outcome = Outcome(job_id, attempt, "requeued", reason="its claim's reply was lost")
                woke = self._finish(conn, outcome, now)[1] or woke
            for r in running:
                if (r.job_id, r.attempt) not in current:
                    reply.fenced.append((r.job_id, r.attempt))
                    continue
                if current[(r.job_id, r.attempt)]:
                    reply.cancel.append(r.job_id)
                if r.progress is not None:
                    conn.execute(J.update().where(J.c.id == r.job_id, J.c.attempt == r.attempt)
                                 .values(progress=r.progress))
            return reply

        reply = self.backend.run(tx, write=True)
        if woke:
            self.bump_version()
        return reply

    def worker_heartbeats(self) -> dict[int, tuple[int, str, int]]:
        """id -> (heartbeat counter, state, running jobs) of every worker that could hold jobs."""
        w = s.workers
        live = [s.WorkerState.ACTIVE.value, s.WorkerState.DRAINING.value, s.WorkerState.QUARANTINED.value]
        running = (sa.select(J.c.worker_id, sa.func.count().label("n")).where(RUNNING_ON_A_WORKER)
                   .group_by(J.c.worker_id).subquery())
        query = (sa.select(w.c.id, w.c.heartbeat, w.c.state, sa.func.coalesce(running.c.n, 0))
                 .select_from(w.outerjoin(running, running.c.worker_id == w.c.id)).where(w.c.state.in_(live)))
        return self._read(lambda conn: {r[0]: (r[1], r[2], r[3]) for r in conn.execute(query)})

    def declare_dead(self, worker_id: int, seen_heartbeat: int, reason: str = "lost") -> list[int]:
        """Mark a worker dead if its heartbeat is still ``seen_heartbeat``; requeue its jobs."""
        now = time.time()
        w = s.workers

        def tx(conn: Connection) -> list[int]:
            hit = conn.execute(w.update().where(w.c.id == worker_id, w.c.heartbeat == seen_heartbeat,
                                                w.c.state != s.WorkerState.DEAD.value)
                               .values(state=s.WorkerState.DEAD.value, reason=reason)).rowcount
            return self._requeue_worker_jobs(conn, worker_id, now) if hit else []

        return self._write(tx)

    def _requeue_worker_jobs(self, conn: Connection, worker_id: int, now: float) -> list[int]:
        """The worker is gone: its running jobs lose this attempt (reason `lost`)."""
        rows = conn.execute(sa.select(J.c.id, J.c.attempt).where(
            J.c.worker_id == worker_id, J.c.state == Q.RUNNING.value)).all()
        for row in rows:
            self._finish(conn, Outcome(row.id, row.attempt, "lost", reason="lost"), now)
        return [row.id for row in rows]

    def set_worker_state(self, worker_id: int, state: str, reason: str | None = None) -> None:
        w = s.workers
        self.backend.run(lambda conn: conn.execute(w.update().where(w.c.id == worker_id)
                                                   .values(state=state, reason=reason)), write=True)

    def request_drain(self, name: str) -> bool:
        """Ask a worker (by name) to stop claiming and requeue its jobs, as SIGTERM would."""
        w = s.workers
        return bool(self._write(lambda conn: conn.execute(
            w.update().where(w.c.name == name, w.c.state.notin_([s.WorkerState.DEAD.value,
                                                                s.WorkerState.STOPPED.value]))
            .values(drain=True)).rowcount))

    # -- operator commands ------------------------------------------------------------------------

    def _select_jobs(self, ids: Iterable[int] = (), grid: str | None = None,
                     states: Sequence[str] = (), reason: str | None = None) -> Any:
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

    def cancel(self, ids: Iterable[int] = (), grid: str | None = None) -> tuple[int, int]:
        """Cancel queued jobs now and ask workers to stop running ones; returns (queued, running)."""
        now = time.time()
        sel = self._select_jobs(ids, grid)

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
        sel = self._select_jobs(ids, grid, states, reason="lost" if lost and not failed else None)

        def tx(conn: Connection) -> int:
            grid_ids = conn.execute(sa.select(J.c.grid_id).where(sel).distinct()).scalars().all()
            n = conn.execute(J.update().where(sel).values(
                state=Q.QUEUED.value, failures=0, crashes=0, reason=None, exit_code=None,
                not_before=None, finished_at=None, from_scratch=from_scratch)).rowcount
            for grid_id in grid_ids:
                self._refresh_ready(conn, grid_id)
            return n

        return self._write(tx)

    def set_paused(self, grid: str, paused: bool) -> bool:
        gr = s.grids
        return bool(self._write(lambda conn: conn.execute(
            gr.update().where(gr.c.name == grid).values(paused=paused)).rowcount))

    # -- queries ----------------------------------------------------------------------------------

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

    def _job_columns(self) -> list[Any]:
        return [J.c.id, J.c.key, s.grids.c.name.label("grid"), s.groups.c.name.label("group"), J.c.kind,
                J.c.params, J.c.repeat, J.c.state, J.c.attempt, J.c.failures, J.c.crashes, J.c.reason,
                J.c.exit_code, J.c.priority, J.c.gpus, J.c.cpus, J.c.mem_gb, J.c.max_attempts,
                J.c.submitted_at, J.c.started_at, J.c.finished_at, J.c.progress, J.c.metrics,
                J.c.worker_id, J.c.command, J.c.cancel_requested]

    def jobs(self, *, ids: Iterable[int] = (), grid: str | None = None, states: Sequence[str] = (),
             group: str | None = None, limit: int | None = None, newest_first: bool = False,
             ) -> list[dict[str, Any]]:
        sel = self._select_jobs(ids, grid, states)
        if group:
            sel &= s.groups.c.name == group
        order = J.c.id.desc() if newest_first else J.c.id
        query = (sa.select(*self._job_columns())
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
            problems: list[str] = []
            if not self._pg:
                result = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check")]
                if result != ["ok"]:
                    problems.extend(result)
            dup = conn.execute(sa.select(J.c.key).group_by(J.c.key).having(sa.func.count() > 1)).all()
            problems.extend(f"duplicate job key {r.key}" for r in dup)
            orphan = conn.execute(sa.select(sa.func.count()).select_from(J)
                                  .where(J.c.state == Q.RUNNING.value, J.c.worker_id.is_(None))).scalar_one()
            if orphan:
                problems.append(f"{orphan} running jobs have no worker")
            return problems

        return self._read(tx)


def _build_statement(name: str, pg: bool) -> Any:
    """The hot path's statements, with bind parameters (see Store._stmt). On PostgreSQL a claim and
    a finish each write their attempt row in the same statement (a data-modifying CTE): every
    statement is a round trip to the server, and round trips are most of a claim's time."""
    stmt = _build_plain_statement(name, pg)
    if pg and name.startswith("claim"):
        claimed = stmt.cte("claimed")
        started = s.attempts.insert().from_select(
            ["job_id", "attempt", "worker_id", "started_at"],
            sa.select(claimed.c.id, claimed.c.attempt, sa.bindparam("p_wid", type_=sa.Integer),
                      sa.bindparam("p_now", type_=sa.Float))).cte("started")
        return sa.select(claimed).add_cte(started)
    if pg and name.startswith("finish_"):
        finished = stmt.cte("finished")
        ended = _build_plain_statement("attempt_end", pg).where(sa.exists(sa.select(finished.c.state))).cte("ended")
        return sa.select(finished).add_cte(ended)
    return stmt


def _lit(value: str | int) -> Any:
    """A constant written into the SQL: bound parameters cost every execution on the hot path."""
    return sa.literal_column(f"'{value}'" if isinstance(value, str) else str(int(value)))


def _build_plain_statement(name: str, pg: bool) -> Any:
    bp = sa.bindparam
    w, a, g, gr = s.workers, s.attempts, s.groups, s.grids
    if name.startswith("claim"):
        alive = sa.exists().where(w.c.id == bp("p_wid"), w.c.incarnation == bp("p_inc"),
                                  w.c.state != _lit(s.WorkerState.DEAD.value),
                                  w.c.state != _lit(s.WorkerState.STOPPED.value))
        fits = sa.or_(sa.and_(J.c.gpus > _lit(0), J.c.gpus <= bp("p_free_gpus")),
                      sa.and_(J.c.gpus == _lit(0), bp("p_free_slots") > _lit(0)))
        due = sa.or_(J.c.not_before.is_(None), J.c.not_before <= bp("p_now"), J.c.not_before > bp("p_horizon"))
        cand = (sa.select(J.c.id).select_from(J.join(g, g.c.id == J.c.group_id).join(gr, gr.c.id == J.c.grid_id))
                .where(J.c.state == _lit(Q.QUEUED.value), g.c.ready.is_(True), gr.c.paused.is_(False), fits,
                       due, alive)
                .order_by(J.c.priority.desc(), J.c.id).limit(_lit(1)))
        if name == "claim_in_grids":
            cand = cand.where(gr.c.name.in_(bp("p_grids", expanding=True)))
        if pg:
            cand = cand.with_for_update(skip_locked=True, of=J)
        return (J.update().where(J.c.id == cand.scalar_subquery())
                .values(state=_lit(Q.RUNNING.value), attempt=J.c.attempt + _lit(1), worker_id=bp("p_wid"),
                        started_at=bp("p_now"), finished_at=sa.null(), progress=sa.null(), exit_code=sa.null(),
                        reason=sa.null())
                .returning(J.c.id, J.c.attempt, J.c.key, J.c.grid_id, J.c.group_id, J.c.kind, J.c.params,
                           J.c.repeat, J.c.command, J.c.gpus, J.c.cpus, J.c.mem_gb, J.c.from_scratch))
    if name == "next_due":
        return sa.select(sa.func.min(J.c.not_before)).where(
            J.c.state == _lit(Q.QUEUED.value), J.c.not_before > bp("p_now"), J.c.not_before <= bp("p_horizon"))
    if name == "beat":
        return w.update().where(w.c.id == bp("p_wid")).values(heartbeat=w.c.heartbeat + 1)
    if name == "attempt_start":
        return a.insert().values(job_id=bp("p_job"), attempt=bp("p_attempt"), worker_id=bp("p_wid"),
                                 started_at=bp("p_now"))
    if name == "attempt_end":
        return (a.update().where(a.c.job_id == bp("p_job"), a.c.attempt == bp("p_attempt"))
                .values(ended_at=bp("p_now"), outcome=bp("p_state"), exit_code=bp("p_exit_code"),
                        reason=bp("p_reason")))
    if name.startswith("finish_"):
        variant = name.removeprefix("finish_")
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
        else:
            values = {"state": bp("p_state"), "finished_at": bp("p_now"), "not_before": sa.null()}
        values.update(worker_id=sa.null(), exit_code=bp("p_exit_code"), reason=bp("p_reason"),
                      cancel_requested=sa.false())
        current = (J.c.id == bp("p_job")) & (J.c.attempt == bp("p_attempt")) & (J.c.state == _lit(Q.RUNNING.value))
        # Spelled out: SQLAlchemy leaves RETURNING columns unqualified, and inside this subquery an
        # unqualified group_id would name group_deps' own column.
        has_dependants = sa.literal_column(
            "EXISTS (SELECT 1 FROM group_deps AS d WHERE d.after_group_id = jobs.group_id)").label("has_dependants")
        return (J.update().where(current).values(**values)
                .returning(J.c.group_id, J.c.state, J.c.metrics, has_dependants))
    if name == "group_pending":
        return sa.select(J.c.id).where(
            J.c.group_id == bp("p_group"),
            J.c.state.in_([Q.QUEUED.value, Q.RUNNING.value, Q.FAILED.value, Q.CANCELLED.value])).limit(1)
    raise KeyError(name)
