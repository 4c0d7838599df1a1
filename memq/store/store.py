"""The Store: every read and write of a root's job table, each one short transaction.

One facade over parts split by what they serve (read, and extend, the part you need):

* memq.store.queue: submit, claim, finish (the worker's hot path);
* memq.store.workers: registration, heartbeats, death and draining;
* memq.store.checkpoints: the checkpoint and artifact registry;
* memq.store.commands: cancel, retry, pause;
* memq.store.reads: reads for display, and the integrity check.

Their SQL: memq.store.statements (named statements) and memq.store.schema; every difference
between SQLite and PostgreSQL: the backend (memq.store.backend). Callers never see a connection;
they get plain values from memq.store.types or row dicts for display, and
:class:`~memq.store.errors.StoreUnavailable` when the database cannot be reached.
"""

from __future__ import annotations

from memq.store import migrations
from memq.store.checkpoints import CheckpointOps
from memq.store.commands import CommandOps
from memq.store.queue import QueueOps
from memq.store.reads import ReadOps
from memq.store.schema import SCHEMA_VERSION
from memq.store.workers import WorkerOps


class Store(QueueOps, WorkerOps, CheckpointOps, CommandOps, ReadOps):
    """The job table of one memq root."""

    def initialize(self) -> None:
        """Create the schema if missing (safe to race), and check or upgrade its version. A database
        at this version is left as it is, and so is the version file."""
        if self.backend.run(lambda conn: migrations.create(conn, self.backend)):
            self.bump_version()

    def exists(self) -> bool:
        """Whether the memq tables are there (an older schema is upgraded first)."""
        found = self._read(migrations.found_version)
        if found is None:
            return False
        if found != SCHEMA_VERSION:
            self.initialize()
        return True
