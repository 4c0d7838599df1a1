"""Which GPUs this node may use: NVML discovery plus a health filter.

A GPU that something else is already using (utilisation or memory above a threshold) is left
alone - the check the original docker-restart scripts did by hand with nvidia-smi.
"""

from __future__ import annotations

from dataclasses import dataclass

from memq.errors import UserError


@dataclass(frozen=True)
class GpuState:
    index: int
    name: str
    utilization: int  # percent
    memory_used_mb: int
    memory_total_mb: int

    def busy(self, max_utilization: int, max_memory_fraction: float) -> bool:
        used = self.memory_used_mb / max(self.memory_total_mb, 1)
        return self.utilization > max_utilization or used > max_memory_fraction


class Nvml:
    """A thin, lazily initialised view of NVML; ``available`` is False without an NVIDIA driver."""

    def __init__(self) -> None:
        self.available = False
        self.reason = ""
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # no library, no driver, no device: all mean "no GPUs"
            self.reason = str(exc) or type(exc).__name__
            return
        self._nvml = pynvml
        self.available = True

    def count(self) -> int:
        return self._nvml.nvmlDeviceGetCount() if self.available else 0

    def state(self, index: int) -> GpuState:
        nv = self._nvml
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        util = nv.nvmlDeviceGetUtilizationRates(handle).gpu
        mem = nv.nvmlDeviceGetMemoryInfo(handle)
        name = nv.nvmlDeviceGetName(handle)
        return GpuState(index, name if isinstance(name, str) else name.decode(), int(util),
                        int(mem.used // 2**20), int(mem.total // 2**20))


def parse_indices(spec: str, option: str) -> list[int]:
    """``0-3,6`` -> [0, 1, 2, 3, 6]: GPU indices and ranges of them, each index once."""
    wanted: set[int] = set()
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        first, dash, last = part.partition("-")
        try:
            lo, hi = int(first), int(last if dash else first)
        except ValueError:
            raise UserError(f"{spec!r} is not a list of GPU indices like 0,1,3 or 0-3",
                            where=option) from None
        if lo < 0 or hi < lo:
            raise UserError(f"{part!r} is not a GPU index or a range low-high", where=option)
        wanted.update(range(lo, hi + 1))
    return sorted(wanted)


def parse_gpus(spec: str, nvml: Nvml) -> tuple[list[int], str]:
    """`auto`, `none`, or indices like `0,1,3` / `0-7` -> (GPU indices, a sentence saying what was decided)."""
    spec = spec.strip().lower()
    if spec in ("none", ""):
        return [], "GPUs: none (CPU jobs only)"
    if spec == "auto":
        if not nvml.available:
            return [], f"GPUs: none found (no NVIDIA driver: {nvml.reason}); running CPU jobs only"
        found = list(range(nvml.count()))
        return found, f"GPUs: {','.join(map(str, found)) or 'none'} (NVML)"
    wanted = parse_indices(spec, "--gpus")
    if nvml.available:
        missing = [i for i in wanted if i >= nvml.count()]
        if missing:
            raise UserError(f"GPU {missing[0]} does not exist (this node has {nvml.count()})", where="--gpus")
    return wanted, f"GPUs: {','.join(map(str, wanted))}" + ("" if nvml.available else " (not checked: no NVML)")


def healthy(candidates: list[int], nvml: Nvml, max_utilization: int, max_memory_fraction: float) -> list[int]:
    """The candidates that nothing else is using right now (all of them without NVML)."""
    if not nvml.available:
        return candidates
    return [i for i in candidates if not nvml.state(i).busy(max_utilization, max_memory_fraction)]
