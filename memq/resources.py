"""What a grid file's `resources` ask for: whole GPUs or a share of one (memq/worker/sharing.py),
CPUs, memory, and GPU memory; and the base of every part of a grid file."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from memq.spec import split_gpus


class Strict(BaseModel):
    """A part of a grid file: unknown keys and loose types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _gpu_count(gpus: float | None) -> float | None:
    if gpus is not None:
        split_gpus(gpus)  # its ValueError is the user's error
    return gpus


class Resources(Strict):
    gpus: Annotated[float | None, Field(ge=0, le=64), AfterValidator(_gpu_count)] = None  # or a share: 0.25
    cpus: Annotated[int, Field(ge=1, le=4096)] = 1
    mem_gb: Annotated[float, Field(ge=0)] = 0.0
    gpu_mem_gb: Annotated[float, Field(ge=0)] = 0.0  # GPU memory per GPU the job declares it needs

    def placement(self, default_gpus: int) -> dict[str, Any]:
        """The JobSpec fields these resources set (``default_gpus``: the kind's, when they say none);
        ValueError for GPU memory without GPUs."""
        gpus, share = split_gpus(default_gpus if self.gpus is None else self.gpus)
        if self.gpu_mem_gb and not (gpus or share):
            raise ValueError("resources.gpu_mem_gb is GPU memory, for a job with GPUs; this one has gpus: 0")
        return {"gpus": gpus, "gpu_share": share, "cpus": self.cpus, "mem_gb": self.mem_gb,
                "gpu_mem_gb": self.gpu_mem_gb}
