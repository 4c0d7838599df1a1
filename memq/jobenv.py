"""What a job process receives from its worker (environment variables) and answers (its exit code).

The worker writes a :class:`JobEnv` with :meth:`JobEnv.to_env`; the job process reads it back with
:meth:`JobEnv.from_env` (``memq.context.JobContext`` is a JobEnv). Command jobs read the same
variables: MEMQ_JOB_ID, MEMQ_ATTEMPT, MEMQ_JOB_DIR, MEMQ_PARAMS and one MEMQ_PARAM_<NAME> per param.
Standard library only: a job process reads this before it imports anything heavy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from memq import paths

if TYPE_CHECKING:
    from memq.store.types import Claim

EXIT_FENCED = 75  # the job learnt that a newer attempt replaced it, and stopped
EXIT_PERMANENT = 78  # retrying cannot help (unknown kind, bad parameters, missing input): fail at once
EXIT_GPU_OOM = 76  # out of GPU memory: a job sharing its GPU goes back to the queue to run alone

# Numerical libraries start one thread per core each; a job gets the CPU threads it asked for
# (resources.cpus): two CPU jobs spinning on two cores ran >10x slower.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def param_variable(name: str) -> str:
    """MEMQ_PARAM_<NAME>: the param's name upper-cased, every other character than A-Z0-9 an underscore."""
    return "MEMQ_PARAM_" + "".join(c if c.isalnum() else "_" for c in name).upper()


def _make_attempt_dir(path: Path) -> None:
    """``mkdir -p path`` in two system calls where its job's directory is new and the grid's exists
    (most attempts) rather than Path.mkdir(parents=True)'s three: short jobs start hundreds a second."""
    try:
        os.mkdir(path.parent)
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(exist_ok=True)


@dataclass
class JobEnv:
    """One attempt of a job, as its process sees it."""

    job_id: int
    attempt: int
    grid: str
    group: str
    kind: str
    params: dict[str, Any]
    repeat: int
    job_dir: Path  # this attempt's own directory on the shared root
    scratch_dir: Path  # node-local, this attempt's own
    root: Path
    gpus: list[int] = field(default_factory=list)
    from_scratch: bool = False
    db: str | None = None  # the store's URL when it is not the root's SQLite file
    key: str = ""
    cpus: int = 1
    sync: bool = False  # copy the job's checkpoints to the shared store when it succeeds

    @classmethod
    def of_claim(cls, claim: Claim, root: Path, scratch: Path, gpus: Sequence[int] = (), **more: Any) -> Self:
        """The attempt ``claim`` starts, with its directories where memq.paths puts them."""
        return cls(job_id=claim.job_id, attempt=claim.attempt, grid=claim.grid, group=claim.group,
                   kind=claim.kind, params=claim.params, repeat=claim.repeat,
                   job_dir=paths.job_dir(root, claim.grid, claim.job_id, claim.attempt),
                   scratch_dir=paths.scratch_dir(scratch, root, claim.grid, claim.job_id, claim.attempt), root=root,
                   gpus=list(gpus), from_scratch=claim.from_scratch, key=claim.key, cpus=claim.cpus, **more)

    def make_dirs(self) -> None:
        _make_attempt_dir(self.job_dir)
        _make_attempt_dir(self.scratch_dir)

    def to_env(self) -> dict[str, str]:
        """Every variable the worker sets for this attempt's process (on top of its own environment)."""
        devices = ",".join(map(str, self.gpus))
        env = {
            "MEMQ_JOB_ID": str(self.job_id), "MEMQ_ATTEMPT": str(self.attempt), "MEMQ_JOB_KEY": self.key,
            "MEMQ_GRID": self.grid, "MEMQ_GROUP": self.group, "MEMQ_KIND": self.kind,
            "MEMQ_REPEAT": str(self.repeat), "MEMQ_PARAMS": json.dumps(self.params),
            "MEMQ_JOB_DIR": str(self.job_dir), "MEMQ_SCRATCH_DIR": str(self.scratch_dir), "MEMQ_ROOT": str(self.root),
            "MEMQ_GPUS": devices, "MEMQ_FROM_SCRATCH": "1" if self.from_scratch else "0",
            "CUDA_VISIBLE_DEVICES": devices, "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "PYTHONUNBUFFERED": "1", "MEMQ_SYNC": "1" if self.sync else "0",
        }
        env.update(dict.fromkeys(THREAD_VARIABLES, str(max(self.cpus, 1))))
        if self.db:
            env["MEMQ_DB"] = self.db
        for name, value in self.params.items():
            env[param_variable(name)] = value if isinstance(value, str) else json.dumps(value)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        """The attempt this process runs, from the variables its worker set (default: os.environ)."""
        if env is None:
            env = os.environ
        threads = env.get(THREAD_VARIABLES[0], "")  # set by the worker; OpenMP also allows lists ("4,2")
        return cls(job_id=int(env["MEMQ_JOB_ID"]), attempt=int(env["MEMQ_ATTEMPT"]), grid=env["MEMQ_GRID"],
                   group=env["MEMQ_GROUP"], kind=env["MEMQ_KIND"], params=json.loads(env["MEMQ_PARAMS"]),
                   repeat=int(env.get("MEMQ_REPEAT", "0")), job_dir=Path(env["MEMQ_JOB_DIR"]),
                   scratch_dir=Path(env["MEMQ_SCRATCH_DIR"]), root=Path(env["MEMQ_ROOT"]),
                   gpus=[int(g) for g in env.get("MEMQ_GPUS", "").split(",") if g],
                   from_scratch=env.get("MEMQ_FROM_SCRATCH") == "1", db=env.get("MEMQ_DB") or None,
                   key=env.get("MEMQ_JOB_KEY", ""), cpus=int(threads) if threads.isdigit() else 1,
                   sync=env.get("MEMQ_SYNC") == "1")

    def template_values(self) -> dict[str, Any]:
        """What a command job's argv may name: its params, then {grid} {group} {repeat} {job_id}
        {attempt} {job_dir} {scratch_dir}."""
        return {**self.params, "grid": self.grid, "group": self.group, "repeat": self.repeat,
                "job_id": self.job_id, "attempt": self.attempt, "job_dir": str(self.job_dir),
                "scratch_dir": str(self.scratch_dir)}
