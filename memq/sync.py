"""`memq sync`: registered checkpoints from node-local scratch to the shared store, verified.

Resumable and idempotent: a checkpoint whose shared copy exists is skipped (or re-verified with
``verify``); a copy that fails its checksum is replaced from its source or reported - the registry
never points at bytes that do not hash to the registered sha256.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memq.checkpoints import ChecksumError, pull, shared_copy_path, verify

if TYPE_CHECKING:
    from memq.store.store import Store


@dataclass
class SyncReport:
    copied: list[str] = field(default_factory=list)
    already: int = 0
    unreachable: list[str] = field(default_factory=list)  # source on another host, or gone
    corrupt: list[str] = field(default_factory=list)  # a copy or a source whose checksum failed

    @property
    def ok(self) -> bool:
        return not self.unreachable and not self.corrupt


def sync(store: Store, *, grid: str | None = None, job_ids: Iterable[int] = (), recheck: bool = False,
         remote: bool = False, on_row: Callable[[dict[str, Any]], None] | None = None) -> SyncReport:
    """Copy every registered checkpoint (of ``grid`` / ``job_ids``) that has no good shared copy."""
    report = SyncReport()
    grids = {row["id"]: row["grid"] for row in store.jobs(ids=job_ids, grid=grid)}
    for row in store.checkpoints(job_ids=job_ids, grid=grid):
        if on_row is not None:
            on_row(row)
        name = f"job {row['job_id']} {Path(row['path']).name}"
        if row["synced_path"]:
            if not recheck:
                report.already += 1
                continue
            try:
                verify(Path(row["synced_path"]), row["size"], row["sha256"])
                report.already += 1
                continue
            except ChecksumError as exc:
                report.corrupt.append(f"{name}: shared copy {exc}; copying it again")
                store.mark_synced(row["id"], None)
        if Path(row["path"]).is_relative_to(store.root):  # already on the shared root
            try:
                verify(Path(row["path"]), row["size"], row["sha256"])
            except ChecksumError as exc:
                report.corrupt.append(f"{name}: {exc}")
                continue
            store.mark_synced(row["id"], row["path"])
            report.copied.append(name)
            continue
        dest = shared_copy_path(store.root, row, grids[row["job_id"]])
        try:
            how = pull(row, dest, remote=remote)
        except FileNotFoundError as exc:
            report.unreachable.append(f"{name}: {exc}")
            continue
        except ChecksumError as exc:
            report.corrupt.append(f"{name}: source {exc}")
            continue
        store.mark_synced(row["id"], str(dest))
        report.copied.append(f"{name} ({how})")
    return report
