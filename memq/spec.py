"""What a grid asks for: its groups and jobs, as expanded from a grid file and handed to the store.

Outside the store, so that loading a grid file does not import the store (nor SQLAlchemy).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

# One encoder for every call: json.dumps builds a new one per call when given options (a job key's JSON
# took 2.1 us, now 1.5).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


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
    gpu_share: float = 0.0  # a fraction 1/k of one GPU (then gpus is 0): memq/worker/sharing.py
    gpu_mem_gb: float = 0.0  # GPU memory it declares it needs, per GPU (0: not declared)
    # Every job's key is needed (expansion checks them, submit looks them up), so it is computed as the
    # job is built: a cached_property takes a lock on first use (Python 3.11), ~1.2 us of the ~9 us a
    # job took to expand.
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        identity = [self.grid, self.group, self.kind, self.params, self.repeat]
        object.__setattr__(self, "key", hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:32])

    @property
    def run_fields(self) -> tuple[Any, ...]:
        """What the job runs with besides its command: the spec hash's other inputs."""
        return self.gpus, self.cpus, self.mem_gb, self.priority, self.max_attempts, self.gpu_share, self.gpu_mem_gb

    @cached_property  # (a job's fields are not changed after it is built)
    def spec_hash(self) -> str:
        """Hash of what the job would run; a resubmitted job whose hash differs was edited."""
        *before_sharing, gpu_share, gpu_mem_gb = self.run_fields
        what: list[Any] = [self.command, *before_sharing]
        if gpu_share or gpu_mem_gb:  # only then: the hashes of jobs submitted before stay
            what.append([gpu_share, gpu_mem_gb])
        return hashlib.sha256(canonical_json(what).encode()).hexdigest()[:16]


MAX_SHARES = 16  # the smallest share of a GPU is 1/16


def split_gpus(gpus: float) -> tuple[int, float]:
    """``resources.gpus`` as (whole GPUs, share of one GPU): 2 -> (2, 0.0), 0.25 -> (0, 0.25). A share
    is a fraction 1/k of one GPU (k = 2 to MAX_SHARES, within 1e-6), else ValueError."""
    if abs(gpus - round(gpus)) <= 1e-6:
        return round(gpus), 0.0
    k = round(1 / gpus) if 0 < gpus < 1 else 0
    if not 2 <= k <= MAX_SHARES or abs(gpus - 1 / k) > 1e-6:
        raise ValueError(f"{gpus:g} GPUs is neither a whole number nor a share 1/k of one GPU "
                         f"(1/2, 1/3, ... 1/{MAX_SHARES})")
    return 0, 1 / k


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
