"""GPU sharing: jobs that ask for a share of one GPU (`resources: {gpus: 0.25, gpu_mem_gb: 16}`)
pack onto one GPU while their shares add up to at most 1 and their declared GPU memory fits.

Shared jobs and whole-GPU jobs never mix on one GPU: a GPU that runs a shared job is busy for
whole-GPU jobs, and a shared job starts on a free GPU only when the partly shared GPU with the most
room cannot take it (pack first). Shared jobs use the general pool only (memq/worker/pools.py).

A GPU's memory is what `memq worker --gpu-mem-gb` declares, else NVML's total, else it is not
checked; with NVML the free memory NVML reports is checked too before a shared job starts (a
neighbour may use more than it declared). Every job on a GPU gets the same CUDA_VISIBLE_DEVICES.

A shared job that runs out of GPU memory (a Python kind: the runner exits EXIT_GPU_OOM; a command
job: that exit code, or "CUDA out of memory" in the end of its log) is requeued uncharged, and runs
on a GPU of its own from then on (outcome ``requeued_alone``: memq/store/statements.py finish).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from memq.gpus import Nvml
from memq.jobenv import EXIT_GPU_OOM
from memq.store.types import NO_GPU_MEM_LIMIT, SHARE_SLACK, Capacity, Claim
from memq.worker.pools import GpuPools

OOM_MARK = b"CUDA out of memory"
LOG_TAIL = 64 * 1024  # bytes of a job's log searched for OOM_MARK


@dataclass
class GpuUse:
    """The shared jobs on one GPU: how many, the share and the declared memory (GB) they hold."""

    jobs: int = 0
    share: float = 0.0
    mem: float = 0.0


def shared_use(running: Iterable[tuple[Claim, list[int]]]) -> dict[int, GpuUse]:
    """Per GPU, what the running shared jobs (claim, GPUs given) hold."""
    use: dict[int, GpuUse] = {}
    for claim, gpus in running:
        if claim.gpu_share > 0:
            for g in gpus:
                u = use.setdefault(g, GpuUse())
                u.jobs, u.share, u.mem = u.jobs + 1, u.share + claim.gpu_share, u.mem + claim.gpu_mem_gb
    return use


def ran_out_of_gpu_memory(code: int | None, log: Path) -> bool:
    """Whether a job that failed with ``code`` ran out of GPU memory (its exit code or its log says so)."""
    if code == EXIT_GPU_OOM:
        return True
    try:
        with log.open("rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - LOG_TAIL))
            return OOM_MARK in fh.read()
    except OSError:
        return False


class Sharing:
    """Where shared jobs fit on a worker's GPUs: the capacity it claims with, and the GPU a claimed
    shared job gets."""

    def __init__(self, pools: GpuPools, gpu_mem_gb: float | None, nvml: Nvml | None = None) -> None:
        self.pools = pools
        self.declared = gpu_mem_gb
        self.nvml = nvml if nvml is not None and nvml.available else None

    def total(self, gpu: int) -> float:
        """The GPU's memory in GB: declared, else NVML's, else no limit."""
        if self.declared is not None:
            return self.declared
        return self.nvml.state(gpu).memory_total_mb / 1024 if self.nvml else NO_GPU_MEM_LIMIT

    def _free_now(self, gpu: int) -> float:
        """What NVML says is free on the GPU now (GB); no limit without NVML."""
        if self.nvml is None:
            return NO_GPU_MEM_LIMIT
        state = self.nvml.state(gpu)
        return (state.memory_total_mb - state.memory_used_mb) / 1024

    def _whole(self, gpu: int) -> float:
        """The memory (GB) a job may count on on a free GPU."""
        return min(self.total(gpu), self._free_now(gpu))

    def _room(self, gpu: int, use: GpuUse) -> tuple[float, float]:
        """(free share, free memory in GB) of a partly shared GPU."""
        return 1.0 - use.share, min(self.total(gpu) - use.mem, self._free_now(gpu))

    def candidate(self, use: dict[int, GpuUse]) -> int | None:
        """The partly shared GPU with the most room (share first, then memory); None if none has any."""
        rooms = {g: self._room(g, u) for g, u in use.items() if u.share < 1.0 - SHARE_SLACK}
        return max(rooms, key=lambda g: rooms[g]) if rooms else None

    def capacity(self, capacity: Capacity, free: list[int], use: dict[int, GpuUse]) -> Capacity:
        """``capacity`` (whole GPUs ``free``) with GPU memory and the room for shared jobs added."""
        gpu = self.candidate(use)
        share, share_mem = self._room(gpu, use[gpu]) if gpu is not None else (0.0, NO_GPU_MEM_LIMIT)
        return replace(capacity, gpu_mem=min((self._whole(g) for g in free), default=NO_GPU_MEM_LIMIT),
                       share=max(share, 0.0), share_mem=share_mem,
                       whole_share=capacity.gpus > 0 and any(g in self.pools.general for g in free))

    def place(self, claim: Claim, free: list[int], use: dict[int, GpuUse]) -> list[int] | None:
        """The GPU a claimed shared job starts on: the partly shared one with the most room if the job
        fits there, else a free GPU of the general pool with the memory; None when none can take it now."""
        gpu = self.candidate(use)
        if gpu is not None:
            share, mem = self._room(gpu, use[gpu])
            if claim.gpu_share <= share + SHARE_SLACK and claim.gpu_mem_gb <= mem:
                return [gpu]
        general = [g for g in free if g in self.pools.general]
        fits = [g for g in general if claim.gpu_mem_gb <= self._whole(g)]
        return self.pools.pick(fits, 1) if fits else None


def sharing_view(use: dict[int, GpuUse]) -> dict[str, list[float]] | None:
    """What a worker publishes for `memq status`: {GPU: [jobs, share used]}; None when it shares none."""
    return {str(g): [u.jobs, round(u.share, 4)] for g, u in sorted(use.items())} or None
