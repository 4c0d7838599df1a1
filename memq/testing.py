"""Run a job's attempt in this process as `memq worker` would set it up: for tests and benchmarks
that call job kinds directly. The directories and variables come from the worker's own code
(memq.jobenv, memq.paths), so a rig cannot drift from what a real job process receives."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memq.context import JobContext
from memq.store.types import Capacity, WorkerRef


def claim_context(store: Any, worker: WorkerRef, capacity: Capacity, scratch: Path,
                  gpus: Sequence[int] = ()) -> JobContext | None:
    """Claim the next job that fits ``capacity`` as ``worker``, make its attempt's directories (its
    scratch under ``scratch``) and return its context, bound to ``store``; None if nothing fits."""
    _, claim = store.claim(worker, capacity)
    if claim is None:
        return None
    ctx = JobContext.of_claim(claim, store.root, scratch, gpus, _store=store)
    ctx.make_dirs()
    return ctx


def job_variables(ctx: JobContext) -> dict[str, str]:
    """The MEMQ_* variables the worker sets for the process of ``ctx`` (for monkeypatch.setenv; the
    process-wide ones, CUDA_VISIBLE_DEVICES and thread counts, are left out)."""
    return {name: value for name, value in ctx.to_env().items() if name.startswith("MEMQ_")}
