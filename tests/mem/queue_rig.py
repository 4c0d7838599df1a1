"""A real memq store on disk and the JobContexts its claims give, as a worker would build them.

``MEMQ_TEST_GPUS=0`` (GPU ids, comma-separated) gives the jobs those GPUs, so the same tests
check the GPU path (mixed precision) on a machine that has one.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from memq.context import JobContext
from memq.options import RootOptions
from memq.root import open_store
from memq.spec import GridSpec, GroupSpec, JobSpec
from memq.store.types import Capacity, WorkerRef
from memq.testing import claim_context, job_variables

GRID = "test"


class QueueRig:
    """One grid of Python jobs and one worker at a time; ``lose_worker`` makes the queue requeue
    its running jobs as if the worker had died, and brings up a new worker."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        self.scratch = tmp / "scratch"
        self.store = open_store(RootOptions(root=str(self.root)), create=True)
        self.workers = 0
        self.worker = self._new_worker()

    def _new_worker(self) -> WorkerRef:
        self.workers += 1
        return self.store.register_worker(
            f"w{self.workers}", socket.gethostname(), os.getpid(), "boot", [], slots=1, lease=60.0
        )

    def submit(self, kind: str, params: Mapping[str, Any], group: str = "g", repeat: int = 0) -> int:
        job = JobSpec(GRID, group, kind, dict(params), repeat=repeat)
        self.store.submit(GridSpec(GRID, (GroupSpec(group),), (job,)))
        return next(j["id"] for j in self.store.jobs(grid=GRID) if j["key"] == job.key)

    def claim(self) -> JobContext:
        gpus = [int(g) for g in os.environ.get("MEMQ_TEST_GPUS", "").split(",") if g]
        ctx = claim_context(self.store, self.worker, Capacity(slots=1), self.scratch, gpus)
        assert ctx is not None, "nothing to claim"
        return ctx

    @staticmethod
    def environment(ctx: JobContext) -> dict[str, str]:
        """The MEMQ_* variables a worker sets for the job process of ``ctx``."""
        return job_variables(ctx)

    def lose_worker(self) -> None:
        heartbeat = self.store.worker_heartbeats()[self.worker.id][0]
        self.store.declare_dead(self.worker.id, heartbeat)
        self.worker = self._new_worker()

    def job(self, job_id: int) -> dict[str, Any]:
        return self.store.jobs(ids=[job_id])[0]

    def checkpoints(self, job_id: int) -> list[dict[str, Any]]:
        return self.store.checkpoints(job_ids=[job_id], kind="checkpoint")
