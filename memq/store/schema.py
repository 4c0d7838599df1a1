"""The job table and its neighbours: one SQLAlchemy schema for SQLite and PostgreSQL.

Times are seconds since the epoch on the writer's clock and are for display only: no decision
depends on two hosts' clocks agreeing (liveness uses heartbeat counters, design.md 5).
"""

from __future__ import annotations

import sqlalchemy as sa

from memq.store.names import SCHEMA_VERSION as SCHEMA_VERSION
from memq.store.names import STATES as STATES
from memq.store.names import JobState, WorkerState

metadata = sa.MetaData()

meta = sa.Table(
    "meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

grids = sa.Table(
    "grids", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("paused", sa.Boolean, nullable=False, default=False),
    sa.Column("source", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    # What the last submit expanded (memq.cli.lean.fingerprint) and how many jobs the grid had after
    # it (version 5): the same fingerprint with as many jobs still there is not expanded again.
    sa.Column("fingerprint", sa.String(64)),
    sa.Column("fingerprint_jobs", sa.Integer),
)

groups = sa.Table(
    "groups", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("grid_id", sa.ForeignKey("grids.id"), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    # True when every group this one is `after` has all its jobs succeeded.
    sa.Column("ready", sa.Boolean, nullable=False, default=True),
    sa.UniqueConstraint("grid_id", "name", name="uq_groups_grid_name"),
)

group_deps = sa.Table(
    "group_deps", metadata,
    sa.Column("group_id", sa.ForeignKey("groups.id"), primary_key=True),
    sa.Column("after_group_id", sa.ForeignKey("groups.id"), primary_key=True),
    sa.Index("ix_group_deps_after", "after_group_id"),
)

# A group that waits for one job rather than a whole group (a grid's `each:` groups: one job per job
# of another group, each after its own job only). Jobs are never deleted, so the reference holds.
group_job_deps = sa.Table(
    "group_job_deps", metadata,
    sa.Column("group_id", sa.ForeignKey("groups.id"), primary_key=True),
    sa.Column("after_job_id", sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Index("ix_group_job_deps_after", "after_job_id"),
)

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(32), nullable=False, unique=True),
    sa.Column("grid_id", sa.ForeignKey("grids.id"), nullable=False),
    sa.Column("group_id", sa.ForeignKey("groups.id"), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("params", sa.JSON(none_as_null=True), nullable=False),
    sa.Column("repeat", sa.Integer, nullable=False, default=0),
    sa.Column("command", sa.JSON(none_as_null=True)),
    sa.Column("spec_hash", sa.String(16), nullable=False),
    sa.Column("gpus", sa.Integer, nullable=False, default=0),
    sa.Column("cpus", sa.Integer, nullable=False, default=1),
    sa.Column("mem_gb", sa.Float, nullable=False, default=0.0),
    # A share 1/k of one GPU (gpus is 0 then) and the GPU memory a job declares, per GPU (version 4;
    # memq/worker/sharing.py). A shared job that ran out of GPU memory is set to gpus 1, share 0.
    sa.Column("gpu_share", sa.Float, nullable=False, default=0.0),
    sa.Column("gpu_mem_gb", sa.Float, nullable=False, default=0.0),
    sa.Column("priority", sa.Integer, nullable=False, default=0),
    sa.Column("max_attempts", sa.Integer, nullable=False, default=3),
    sa.Column("state", sa.String(16), nullable=False, default=JobState.QUEUED.value),
    # Incremented by every claim: (id, attempt) names one attempt and fences all its writes.
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    sa.Column("worker_id", sa.ForeignKey("workers.id")),
    sa.Column("failures", sa.Integer, nullable=False, default=0),  # the job's own non-zero exits
    sa.Column("crashes", sa.Integer, nullable=False, default=0),  # its worker was lost under it
    sa.Column("reason", sa.Text),
    sa.Column("exit_code", sa.Integer),
    sa.Column("not_before", sa.Float),  # retry back-off, bounded (see statements.claim)
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("from_scratch", sa.Boolean, nullable=False, default=False),
    sa.Column("submitted_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("progress", sa.JSON(none_as_null=True)),
    sa.Column("metrics", sa.JSON(none_as_null=True)),
    # Claims scan only queued jobs, in claim order; the claim query spells 'queued' as a literal
    # so that both planners can use this partial index.
    sa.Index("ix_jobs_queued", sa.desc("priority"), "id", sqlite_where=sa.text("state = 'queued'"),
             postgresql_where=sa.text("state = 'queued'")),
    # Every index with `state` in it changes on every claim and finish, and on a network filesystem
    # each page a transaction changes costs round trips (design.md 4): so one such index (counts by
    # group, dependencies); grids are found by id alone; a job has a worker exactly while it runs,
    # so the workers' index holds running jobs only (and `worker_id = x` implies its condition).
    sa.Index("ix_jobs_grid", "grid_id"),
    # (version 5: with the GPUs and the two times, which change with state or not at all, so that
    # `memq status` reads GPU needs and run times from the index alone)
    sa.Index("ix_jobs_group_state", "group_id", "state", "gpus", "started_at", "finished_at"),
    sa.Index("ix_jobs_running", "worker_id", sqlite_where=sa.text("worker_id IS NOT NULL"),
             postgresql_where=sa.text("worker_id IS NOT NULL")),
)

# Indexes of schema version 1 that version 2 replaced (see memq.store.migrations).
RETIRED_INDEXES = ("ix_jobs_grid_state", "ix_jobs_worker")

# Keyed by (job, attempt) without a rowid: one b-tree, not a table plus a unique index (a claim
# and a finish each write one attempt row).
attempts = sa.Table(
    "attempts", metadata,
    sa.Column("job_id", sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("worker_id", sa.ForeignKey("workers.id")),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("outcome", sa.String(16)),  # succeeded|failed|lost|requeued|cancelled
    sa.Column("exit_code", sa.Integer),
    sa.Column("reason", sa.Text),
    sqlite_with_rowid=False,
)

workers = sa.Table(
    "workers", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("boot", sa.String(64), nullable=False),
    sa.Column("incarnation", sa.Integer, nullable=False, default=1),
    sa.Column("state", sa.String(16), nullable=False, default=WorkerState.ACTIVE.value),
    sa.Column("reason", sa.Text),
    sa.Column("gpus", sa.JSON(none_as_null=True)),
    sa.Column("slots", sa.Integer, nullable=False, default=1),
    sa.Column("heartbeat", sa.Integer, nullable=False, default=0),  # a counter, not a clock
    sa.Column("heartbeat_at", sa.Float),
    sa.Column("lease", sa.Float, nullable=False),
    sa.Column("drain", sa.Boolean, nullable=False, default=False),
    sa.Column("started_at", sa.Float, nullable=False),
    # {GPU: [shared jobs, share used]} of its GPUs that run shared jobs, for `memq status` (version 4)
    sa.Column("sharing", sa.JSON(none_as_null=True)),
)

checkpoints = sa.Table(
    "checkpoints", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("job_id", sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False, default="checkpoint"),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("host", sa.String(255)),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("metric", sa.Float),
    sa.Column("step", sa.Integer),
    sa.Column("synced_path", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("job_id", "kind", "path", name="uq_checkpoints_job_path"),
)
