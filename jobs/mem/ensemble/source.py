"""What the ensemble kinds share: their params, and the trained job a soup or prediction comes from."""

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


def trained_job(ctx: JobContext, source: int | str) -> dict[str, Any]:
    """The store's row of a succeeded training job, named by id or (a grid's ``each:``) by key."""
    rows = ctx.jobs(ids=[source]) if isinstance(source, int) else ctx.jobs(keys=[source])
    if not rows:
        raise PermanentError(f"source job {source} does not exist")
    if rows[0]["state"] != "succeeded":
        raise PermanentError(f"source job {source} (#{rows[0]['id']}) is {rows[0]['state']}, not succeeded")
    return rows[0]


def registered(ctx: JobContext, job_id: int, kind: str, path: str) -> dict[str, Any] | None:
    """The registry row of one file of ``job_id`` (a soup), or None."""
    return next((row for row in ctx.checkpoints([job_id], kind=kind) if row["path"] == path), None)
