"""`memq worker`'s settings, and where a node's scratch is when none is given."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from memq.claim_ahead import WINDOW
from memq.errors import UserError
from memq.worker.pools import GpuPools


def default_scratch() -> Path:
    """Node-local scratch: $MEMQ_SCRATCH, else a private directory under $TMPDIR (or /tmp)."""
    if os.environ.get("MEMQ_SCRATCH"):
        return Path(os.environ["MEMQ_SCRATCH"])
    path = Path(tempfile.gettempdir()) / f"memq-scratch-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    if path.is_symlink() or path.stat().st_uid != os.getuid():
        raise UserError("scratch directory is not ours", where=str(path), hint="set MEMQ_SCRATCH or --scratch")
    return path


@dataclass
class WorkerConfig:
    name: str
    gpus: list[int] = field(default_factory=list)
    multi_gpu: list[int] = field(default_factory=list)  # the pool for jobs of 2+ GPUs (memq.worker.pools)
    hold_for_multi_gpu: bool = True  # claim no GPU job while a multi-GPU one waits for GPUs to free
    slots: int = 1
    gpu_mem_gb: float | None = None  # each GPU's memory, declared by hand (else NVML's): memq.worker.sharing
    max_jobs: int | None = None
    idle_exit: float | None = None
    poll: float = 1.0
    heartbeat: float = 10.0
    lease: float = 60.0
    grids: tuple[str, ...] = ()
    scratch: Path = field(default_factory=lambda: default_scratch())
    term_grace: float = 30.0  # SIGTERM/drain: how long running jobs may finish before requeue
    kill_grace: float = 10.0  # SIGTERM to a job's process group -> SIGKILL
    retry_backoff: float = 30.0
    quarantine_after: int = 5
    # claim, and look at the other workers, anyway this often: a writer killed between its commit and
    # the bump of the version or busy file (memq/store/base.py) leaves that bump out
    safety_poll: float = 600.0
    sync_checkpoints: bool = True  # jobs copy their checkpoints to the shared store when they succeed
    claim_ahead: float = WINDOW  # seconds of short jobs one transaction may claim (0: one job at a time)

    def check(self) -> None:
        if self.heartbeat * 4 > self.lease:
            raise UserError(f"--heartbeat {self.heartbeat:g} is too long for --lease {self.lease:g}",
                            hint="the lease must cover at least four heartbeats")
        if self.slots < 0 or (not self.gpus and self.slots == 0):
            raise UserError("this worker could run nothing", where="--slots", hint="give --slots N or GPUs")
        GpuPools.of(self.gpus, self.multi_gpu)  # --multi-gpu must be a part of --gpus
        if self.gpu_mem_gb is not None and self.gpu_mem_gb <= 0:
            raise UserError(f"--gpu-mem-gb {self.gpu_mem_gb:g}: a GPU's memory is more than 0 GB")
        if self.claim_ahead < 0:
            raise UserError("--claim-ahead must be 0 or more seconds", hint="0 claims one job at a time")
