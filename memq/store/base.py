"""What every part of the Store stands on: its backend, its root, and the two hint files.

Idle workers make no database transaction while nothing changes; they read two files instead:

* the version file, bumped after every write that may make a job claimable (a submit, a requeue, a
  drain request): an idle worker that sees it change learns its own state (a heartbeat) and claims;
* the busy file, bumped when a worker starts running jobs after holding none (memq.worker.loop):
  an idle worker that sees it change watches the other workers' heartbeats again
  (memq.worker.reaper), so that a worker that dies with jobs is declared dead even when nothing else
  changes. Claims do not bump the version file: that would wake every idle worker to claim.

Both are hints: a writer killed or interrupted between its commit and the bump loses one; the worker's safety
poll (WorkerConfig.safety_poll) claims and looks at the others anyway, once per period.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy.engine import Connection

from memq.files import write_text_atomically
from memq.store.backend import Backend

T = TypeVar("T")

VERSION_FILE = "queue.version"
BUSY_FILE = "queue.busy"
MAX_BACKOFF = 3600.0  # a not_before further ahead than this is a skewed clock: ignore it


class StoreBase:
    """The job table of one memq root, reached one short transaction at a time."""

    def __init__(self, backend: Backend, root: Path) -> None:
        self.backend = backend
        self.root = root
        self.version_path = root / VERSION_FILE
        self.busy_path = root / BUSY_FILE
        # Grid and group names by id (immutable once created), for claims.
        self._names: dict[tuple[str, int], str] = {}
        # Seconds until the first backed-off job is due, as the last empty claim saw it (None:
        # no job is waiting out a back-off). Lets idle workers sleep instead of polling.
        self.retry_in: float | None = None

    def _write(self, fn: Callable[[Connection], T]) -> T:
        """Run a write transaction, then tell idle readers something changed."""
        result = self.backend.run(fn, write=True)
        self.bump_version()
        return result

    def _read(self, fn: Callable[[Connection], T]) -> T:
        return self.backend.run(fn, write=False)

    def bump_version(self) -> None:
        """Tell idle readers something changed (atomic rename: a new inode every time). A hint
        only, so not fsynced: a lost bump costs an idle worker one back-off period."""
        write_text_atomically(self.version_path, secrets.token_hex(8), durable=False)

    def version(self) -> tuple[int, int, int, bytes] | None:
        """A cheap fingerprint of the version file; changes whenever the store changed."""
        return _fingerprint(self.version_path)

    def announce_busy(self) -> None:
        """Tell idle workers that a worker started running jobs: they watch its heartbeat."""
        write_text_atomically(self.busy_path, secrets.token_hex(8), durable=False)

    def busy_version(self) -> tuple[int, int, int, bytes] | None:
        """A cheap fingerprint of the busy file; changes whenever a worker went from idle to busy."""
        return _fingerprint(self.busy_path)

    def job_env(self) -> dict[str, str]:
        """What a job process needs in its environment, besides MEMQ_ROOT, to open this store;
        never a password in a URL (see the backend's job_env)."""
        return self.backend.job_env()


def _fingerprint(path: Path) -> tuple[int, int, int, bytes] | None:
    """Inode, mtime, size and the random token the last bump wrote. A bump renames a new file into
    place, yet a stat alone is not enough: sshfs reuses inode numbers and keeps whole seconds of
    mtime, so every second bump within a second looked unchanged from another mount (an idle worker
    slept through a submit until its safety poll). Opening the file also revalidates it on NFS
    (close-to-open), where a stat may answer from the attribute cache."""
    try:
        with path.open("rb") as file:
            st = os.fstat(file.fileno())
            return (st.st_ino, st.st_mtime_ns, st.st_size, file.read(64))
    except FileNotFoundError:
        return None
