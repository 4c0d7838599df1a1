"""JobContext: what a Python job kind receives, and the only way it talks to the queue.

A job kind is ``def run(ctx: JobContext) -> None``. Its writes (progress, metrics, checkpoints)
name this attempt and raise :class:`~memq.errors.Fenced` once the job has moved on to another
attempt - the job must then stop; its worker kills it anyway.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memq.checkpoints import sha256_file
from memq.errors import Fenced, PermanentError
from memq.jobenv import JobEnv
from memq.paths import sibling_attempt_dir
from memq.sync import SyncReport, sync

PROGRESS_INTERVAL = 2.0  # seconds between progress writes; the dashboard needs no more


@dataclass
class JobContext(JobEnv):
    """The attempt's facts (JobEnv; ``JobContext.from_env()`` in a job process) and its calls to the queue."""

    _store: Any = field(default=None, repr=False)
    _last_progress: float = field(default=0.0, repr=False)

    def _queue(self) -> Any:
        """The store, opened on first use (a job that only computes never connects)."""
        if self._store is None:
            from memq.options import RootOptions
            from memq.root import open_store

            self._store = open_store(RootOptions(root=str(self.root), db=self.db), create=False)
        return self._store

    def jobs(self, *, ids: Iterable[int] = (), grid: str | None = None, keys: Iterable[str] = ()
             ) -> list[dict[str, Any]]:
        """Rows of jobs (``memq jobs --json`` shape): of ``ids``, of ``grid``, of ``keys``, or all."""
        return self._queue().jobs(ids=ids, grid=grid, keys=keys)

    def succeeded_job(self, source: int | str) -> dict[str, Any]:
        """The row of a succeeded job this one builds on, named by id or (a grid's ``each:``) by
        key; PermanentError when it is missing or has not succeeded (a retry cannot change that)."""
        rows = self.jobs(ids=[source]) if isinstance(source, int) else self.jobs(keys=[source])
        if not rows:
            raise PermanentError(f"source job {source} does not exist")
        if rows[0]["state"] != "succeeded":
            raise PermanentError(f"source job {source} (#{rows[0]['id']}) is {rows[0]['state']}, not succeeded")
        return rows[0]

    def checkpoints(self, job_ids: Iterable[int] = (), kind: str | None = "checkpoint") -> list[dict[str, Any]]:
        """Registered files of ``job_ids`` (default: this job), best metric first within a job."""
        return self._queue().checkpoints(job_ids=list(job_ids) or [self.job_id], kind=kind)

    def sync_checkpoints(self, job_ids: Iterable[int] = (), *, remote: bool = False,
                         recheck: bool = False) -> SyncReport:
        """Copy the checkpoints of ``job_ids`` (default: this job) to the shared root, verified (memq sync)."""
        return sync(self._queue(), job_ids=list(job_ids) or [self.job_id], remote=remote,
                                recheck=recheck)

    def register_artifact(self, job_id: int, path: str | os.PathLike[str], kind: str,
                          metric: float | None = None) -> str:
        """Record a file made from finished job ``job_id`` (a soup), with its size and sha256."""
        path = Path(path).absolute()
        digest = sha256_file(path)
        self._queue().register_artifact(job_id, kind=kind, path=str(path), host=socket.gethostname(),
                                        size=path.stat().st_size, sha256=digest, metric=metric)
        return digest

    def previous_attempt_dirs(self) -> list[Path]:
        """Directories of this job's earlier attempts that exist, newest first."""
        return [d for k in range(self.attempt - 1, 0, -1) if (d := sibling_attempt_dir(self.job_dir, k)).is_dir()]

    def resume_file(self, name: str) -> Path | None:
        """The newest ``name`` an earlier attempt left, unless the job was retried from scratch."""
        if self.from_scratch:
            return None
        return next((d / name for d in self.previous_attempt_dirs() if (d / name).is_file()), None)

    def report_progress(self, force: bool = False, **values: Any) -> None:
        """Show progress (epoch, best score...) on the dashboard; at most one write per 2 s."""
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_INTERVAL:
            return
        self._last_progress = now
        if not self._queue().update_attempt(self.job_id, self.attempt, progress=values):
            raise Fenced(self.job_id, self.attempt)

    def record_metrics(self, **metrics: Any) -> None:
        """Merge metrics into the job's record (e.g. val_pearson), visible in `memq jobs --json`."""
        if not self._queue().update_attempt(self.job_id, self.attempt, metrics=metrics):
            raise Fenced(self.job_id, self.attempt)

    def register_checkpoint(self, path: str | os.PathLike[str], metric: float | None = None,
                            step: int | None = None, kind: str = "checkpoint") -> str:
        """Record a checkpoint with its size and sha256; returns the checksum."""
        path = Path(path).absolute()
        digest = sha256_file(path)
        ok = self._queue().register_checkpoint(self.job_id, self.attempt, path=str(path), host=socket.gethostname(),
                                            size=path.stat().st_size, sha256=digest, metric=metric, step=step,
                                            kind=kind)
        if not ok:
            raise Fenced(self.job_id, self.attempt)
        return digest

    def unregister_checkpoint(self, path: str | os.PathLike[str], kind: str = "checkpoint") -> None:
        if not self._queue().unregister_checkpoint(self.job_id, self.attempt, str(Path(path).absolute()), kind):
            raise Fenced(self.job_id, self.attempt)
