"""What a grid asks for: its groups and jobs, as expanded from a grid file and handed to the store.

Outside the store, so that loading a grid file does not import the store (nor SQLAlchemy).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class JobSpec:
    """One job of an expanded grid. Its key is its identity: resubmitting it adds nothing."""

    grid: str
    group: str
    kind: str
    params: dict[str, Any]
    repeat: int = 0
    command: list[str] | None = None
    gpus: int = 0
    cpus: int = 1
    mem_gb: float = 0.0
    priority: int = 0
    max_attempts: int = 3

    # Both hashes are computed once per job (expansion checks the keys, submit needs both): a job's
    # fields are not changed after it is built.
    @cached_property
    def key(self) -> str:
        identity = [self.grid, self.group, self.kind, self.params, self.repeat]
        return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:32]

    @cached_property
    def spec_hash(self) -> str:
        """Hash of what the job would run; a resubmitted job whose hash differs was edited."""
        what = [self.command, self.gpus, self.cpus, self.mem_gb, self.priority, self.max_attempts]
        return hashlib.sha256(canonical_json(what).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GroupSpec:
    name: str
    after: tuple[str, ...] = ()  # groups whose every job must have succeeded
    after_jobs: tuple[str, ...] = ()  # keys of single jobs that must have succeeded (a grid's `each:`)


@dataclass(frozen=True)
class GridSpec:
    name: str
    groups: tuple[GroupSpec, ...]
    jobs: tuple[JobSpec, ...]
    source: str | None = None
    warnings: tuple[str, ...] = ()  # "FILE:LINE: what" about the grid file, for the user


def scheme_name(group: str, repeat: int, repeated: bool) -> str:
    """The ensemble scheme a job belongs to: its group, or GROUP-R for repeat R of a repeated group."""
    return f"{group}-{repeat}" if repeated else group
