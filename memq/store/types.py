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


NO_GPU_MEM_LIMIT = 1e9  # GB: the GPU memory of a GPU that no one declared, in the claim's comparisons
SHARE_SLACK = 1e-6  # three 1/3 shares fill a GPU, though 3 * (1/3) is not 1.0 in floating point


@dataclass(frozen=True)
class Capacity:
    """What a worker can take now: GPU jobs of ``min_gpus`` to ``gpus`` GPUs (a worker with a
    multi-GPU pool, `memq worker --multi-gpu`) of ``gpu_mem`` GB each, free CPU-job slots, which
    grids, and shares of a GPU (memq/worker/sharing.py): ``share`` and ``share_mem`` GB free on
    its partly shared GPU, or a whole free GPU when ``whole_share``."""

    gpus: int = 0
    slots: int = 0
    grids: tuple[str, ...] = ()
    min_gpus: int = 1
    gpu_mem: float = NO_GPU_MEM_LIMIT
    share: float = 0.0
    share_mem: float = NO_GPU_MEM_LIMIT
    whole_share: bool = False

    @property
    def empty(self) -> bool:
        return self.gpus <= 0 and self.slots <= 0 and self.share <= 0 and not self.whole_share

    def fits(self, gpus: int, share: float = 0.0, gpu_mem: float = 0.0) -> bool:
        """Whether a job asking for ``gpus`` GPUs (or a ``share`` of one) and ``gpu_mem`` GB of GPU
        memory could start (the claim statement's rule)."""
        if share > 0:
            return ((share <= self.share + SHARE_SLACK and gpu_mem <= self.share_mem)
                    or (self.whole_share and gpu_mem <= self.gpu_mem))
        if gpus > 0:
            return self.min_gpus <= gpus <= self.gpus and gpu_mem <= self.gpu_mem
        return self.slots > 0

    def sharing_params(self) -> dict[str, float]:
        """The claim statement's parameters for GPU memory and shares."""
        return {"p_gpu_mem": self.gpu_mem, "p_share": self.share + SHARE_SLACK, "p_share_mem": self.share_mem,
                "p_whole_share": int(self.whole_share)}


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
    gpu_share: float = 0.0  # a share of one GPU (gpus is 0 then)
    gpu_mem_gb: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as its worker reports it."""

    job_id: int
    attempt: int
    # succeeded | failed | failed_final (retrying cannot help) | cancelled | lost (charged) | requeued (not charged)
    # | requeued_alone (a shared job out of GPU memory: not charged, runs on a GPU of its own from now on)
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
