"""What the ensemble kinds share: their params, and the registered files of the job a soup or prediction comes from."""

from __future__ import annotations

from typing import Any, TypeVar

from jobs.mem.ensemble.stage_params import StageParams
from memq.job import JobContext, PermanentError

P = TypeVar("P", bound=StageParams)


def stage_params(cls: type[P], ctx: JobContext) -> P:
    """This job's params as ``cls``; bad params cannot be fixed by a retry."""
    try:
        return cls.parse(ctx.params)
    except ValueError as error:
        raise PermanentError(str(error)) from None


def registered(ctx: JobContext, job_id: int, kind: str, path: str) -> dict[str, Any] | None:
    """The registry row of one file of ``job_id`` (a soup), or None."""
    return next((row for row in ctx.checkpoints([job_id], kind=kind) if row["path"] == path), None)
