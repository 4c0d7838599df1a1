"""Values that cross the store's API: what a submit added, what a worker claims and reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SubmitResult:
    grid: str
    added: int
    existing: int
    edited: int  # already queued under the same key, but the file now says something else


@dataclass(frozen=True)
class Capacity:
    """What a worker can take now: GPU jobs of ``min_gpus`` to ``gpus`` GPUs (a worker with a
    multi-GPU pool, `memq worker --multi-gpu`), free CPU-job slots, and which grids."""

    gpus: int = 0
    slots: int = 0
    grids: tuple[str, ...] = ()
    min_gpus: int = 1

    @property
    def empty(self) -> bool:
        return self.gpus <= 0 and self.slots <= 0

    def fits(self, gpus: int) -> bool:
        """Whether a job asking for ``gpus`` GPUs could start (the claim statement's rule)."""
        return self.min_gpus <= gpus <= self.gpus if gpus > 0 else self.slots > 0


@dataclass(frozen=True)
class Claim:
    """A job a worker has claimed: ``(job_id, attempt)`` names this attempt in every later write."""

    job_id: int
    attempt: int
    key: str
    grid: str
    group: str
    kind: str
    params: dict[str, Any]
    repeat: int
    command: list[str] | None
    gpus: int
    cpus: int
    mem_gb: float
    from_scratch: bool


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as its worker reports it."""

    job_id: int
    attempt: int
    # succeeded | failed | failed_final (retrying cannot help) | cancelled | lost (charged) | requeued (not charged)
    state: str
    exit_code: int | None = None
    reason: str | None = None
    metrics: dict[str, Any] | None = None
    backoff: float = 0.0  # seconds before a failed job may run again


@dataclass(frozen=True)
class WorkerRef:
    """One incarnation of a registered worker: a restarted worker of the same name is another."""

    id: int
    incarnation: int


@dataclass(frozen=True)
class Running:
    """One job a worker believes it runs, as sent with its heartbeat."""

    job_id: int
    attempt: int
    progress: dict[str, Any] | None = None


@dataclass
class HeartbeatReply:
    alive: bool  # False: this worker was declared dead (or stopped); it must stand down
    fenced: list[tuple[int, int]] = field(default_factory=list)
    cancel: list[int] = field(default_factory=list)
    drain: bool = False
