"""A real store with a trained grid whose jobs were driven through claim/finish, and an in-process
worker that runs Python kinds (no subprocess: fast enough for many small cases)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from jobs.mem.build import build
from memq import kinds
from memq.context import JobContext
from memq.grid import load_grid
from memq.options import RootOptions
from memq.root import open_store
from memq.spec import GridSpec, GroupSpec, JobSpec
from memq.store.types import Capacity, Outcome
from memq.testing import claim_context

REPO = Path(__file__).parents[2]
GRID = "tgrid"
N_CHECKPOINTS = 3
HALVES = [["RSC", "E", "MV", "ML"], ["MP", "V", "L", "P", "R"]]  # the streams: together every voxel once


def grid_text(params: Mapping[str, Any], *, all_repeats: int = 2, ensemble: bool = True,
              groups: list[dict[str, Any]] | None = None, **combine: Any) -> str:
    """A training grid: `all` (whole brain, repeats) and atlas `A` (two ROI models) unless ``groups``
    says otherwise, and an ensemble section whose stages run on CPUs."""
    grid: dict[str, Any] = {
        "name": GRID,
        "defaults": {"kind": "mem.train", "resources": {"gpus": 0}, "params": dict(params)},
        "groups": groups or [{"name": "all", "repeat": all_repeats}, {"name": "A", "grid": {"DATASET.ROIS": HALVES}}],
    }
    if ensemble:
        grid["ensemble"] = {
            "soup": {"kind": "mem.soup", "params": {"recipe": "greedy"}, "resources": {"gpus": 0}},
            "predict": {"kind": "mem.predict", "splits": ["predict", "val2"], "resources": {"gpus": 0}},
            "combine": {"kind": "mem.ensemble", **({"params": combine} if combine else {})},
        }
    return yaml.safe_dump(grid, sort_keys=False)


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "root"
        self.scratch = tmp / "scratch"
        self.store = open_store(RootOptions(root=str(self.root), db_mode="local"), create=True)
        self.runs = 0
        self.worker = self.store.register_worker("inproc", socket.gethostname(), os.getpid(), "boot", [], 1, 600.0)

    def options(self) -> list[str]:
        return ["--root", str(self.root)]

    def memq(self, *args: object, log: Path) -> subprocess.Popen:
        """`memq ARGS...` on this root as a process of its own (a worker, a waiting command);
        output appended to ``log``, node-local scratch under the rig's directory."""
        env = {**os.environ, "MEMQ_SCRATCH": str(self.tmp / "worker-scratch")}
        with log.open("ab") as out:
            return subprocess.Popen([sys.executable, "-m", "memq", *self.options(), *map(str, args)], cwd=REPO,
                                    env=env, stdout=out, stderr=subprocess.STDOUT)

    def claim(self) -> JobContext | None:
        return claim_context(self.store, self.worker, Capacity(slots=1), self.scratch)

    def finish(self, ctx: JobContext, state: str = "succeeded") -> None:
        assert self.store.finish(Outcome(ctx.job_id, ctx.attempt, state))

    def train(self, grid_file: Path, n_checkpoints: int = N_CHECKPOINTS, seed: int | None = None) -> list[int]:
        """Submit the grid; "train" each job: register checkpoints of its model, perturbed per epoch
        (``seed``: of the perturbations, for every job; by default one per job)."""
        self.store.submit(load_grid(grid_file))
        ids = []
        while (ctx := self.claim()) is not None:
            if n_checkpoints:
                register_checkpoints(ctx, n_checkpoints, seed)
            self.finish(ctx)
            ids.append(ctx.job_id)
        return ids

    def run(self, kind: str, params: Mapping[str, Any]) -> JobContext:
        """Run a new job of ``kind`` in this process, as a worker would; it must succeed."""
        self.runs += 1
        group = f"run-{self.runs}"  # a new job each time, even with the same params
        job = JobSpec("drive", group, kind, dict(params))
        self.store.submit(GridSpec("drive", (GroupSpec(group),), (job,)))
        ctx = self.claim()
        assert ctx is not None and ctx.kind == kind
        self.execute(ctx)
        return ctx

    def execute(self, ctx: JobContext) -> None:
        spec = kinds.lookup(ctx.kind)
        assert spec is not None
        try:
            kinds.entry_function(spec)(ctx)
        except BaseException:
            self.finish(ctx, "failed_final")
            raise
        self.finish(ctx)

    def drain(self) -> int:
        """Run every claimable job in this process; returns how many ran."""
        n = 0
        while (ctx := self.claim()) is not None:
            self.execute(ctx)
            n += 1
        return n


def register_checkpoints(ctx: JobContext, n: int, seed: int | None = None) -> list[dict[str, torch.Tensor]]:
    """``n`` checkpoints of the job's model on its scratch, as mem.train registers them: its
    initial weights plus noise drawn from ``seed`` (default 1000 * job id), later epochs scoring
    higher except that epoch k scores 0.1 + 0.01 * (7k mod n)."""
    model = build(ctx.params, ctx.repeat, [], ctx.root).model
    gen = torch.Generator().manual_seed(1000 * ctx.job_id if seed is None else seed)
    states = []
    for epoch in range(n):
        state = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in model.trainable_state_dict().items()}
        path = ctx.scratch_dir / "checkpoints" / f"epoch-{epoch:04d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
        ctx.register_checkpoint(path, metric=0.1 + 0.01 * ((epoch * 7) % n), step=epoch)
        states.append(state)
    return states
