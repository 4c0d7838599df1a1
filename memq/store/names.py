"""The schema's plain facts - its version, the job and worker states - without SQLAlchemy, for the
commands that read the store without it (memq.cli.lean)."""

from __future__ import annotations

import enum

SCHEMA_VERSION = 5


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


STATES = tuple(s.value for s in JobState)


class WorkerState(enum.StrEnum):
    ACTIVE = "active"
    DRAINING = "draining"
    QUARANTINED = "quarantined"
    STOPPED = "stopped"
    DEAD = "dead"
