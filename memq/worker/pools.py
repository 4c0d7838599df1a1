"""How a worker shares its GPUs between jobs: pools (`--multi-gpu`), which GPUs a job gets, and the
hold for a waiting multi-GPU job (`--hold-for-multi-gpu`).

A job never spans pools. The multi-GPU pool runs only jobs of 2 or more GPUs; the general pool (the
other GPUs, all of them without `--multi-gpu`) runs any GPU job, multi-GPU ones included when the
multi-GPU pool is busy. A job gets a block of consecutive indices starting at a multiple of its size
when one is free (0-1, 2-3 for 2 GPUs; 0-3, 4-7 for 4: the NVLink pairs and quads of common
boards), and a 1-GPU job goes first where such a block is already broken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from memq.errors import UserError
from memq.store.types import Capacity


class WaitingGpus(Protocol):
    def waiting_gpus(self, most: int, grids: tuple[str, ...] = ()) -> int | None: ...


@dataclass(frozen=True)
class GpuPools:
    multi: tuple[int, ...]  # only jobs of 2 or more GPUs
    general: tuple[int, ...]  # any GPU job

    @classmethod
    def of(cls, gpus: list[int], multi: list[int]) -> GpuPools:
        """Split ``gpus``: ``multi`` (a part of them, at least 2) becomes the multi-GPU pool."""
        outside = [g for g in multi if g not in gpus]
        if outside:
            raise UserError(f"GPU {outside[0]} is not one of the worker's GPUs ({','.join(map(str, gpus)) or 'none'})",
                            where="--multi-gpu", hint="--multi-gpu takes a part of --gpus")
        if len(multi) == 1:
            raise UserError("a pool of one GPU could run no multi-GPU job", where="--multi-gpu",
                            hint="give it 2 GPUs or more, e.g. 0-3")
        return cls(tuple(multi), tuple(g for g in gpus if g not in multi))

    def largest(self, usable: set[int]) -> int:
        """The most GPUs a job may ask for to run on the ``usable`` GPUs (all but those that something
        else uses) once this worker's jobs have ended."""
        return max(len(usable.intersection(self.multi)), len(usable.intersection(self.general)))

    def capacity(self, free: list[int], slots: int, grids: tuple[str, ...]) -> Capacity:
        """What fits ``free`` GPUs now: from 1 GPU (2 when only the multi-GPU pool has room) up to
        the free GPUs of the roomier pool."""
        general = sum(g in free for g in self.general)
        multi = sum(g in free for g in self.multi)
        multi = multi if multi >= 2 else 0
        return Capacity(gpus=max(general, multi), slots=slots, grids=grids, min_gpus=1 if general else 2)

    def pick(self, free: list[int], n: int) -> list[int]:
        """``n`` of the ``free`` GPUs, all of one pool, for a job the capacity said fits."""
        for pool in ([self.multi] if n >= 2 else []) + [self.general]:
            room = [g for g in pool if g in free]
            if len(room) >= n:
                return _block(room, n)
        raise ValueError(f"no pool has {n} of the free GPUs {free}")


def _block(room: list[int], n: int) -> list[int]:
    """``n`` GPUs of ``room``: an aligned block, else consecutive ones, else the first; one GPU
    preferably where its aligned pair is already taken."""
    if n == 1:
        return [next((g for g in room if g ^ 1 not in room), room[0])]
    runs = [g for g in room if all(g + k in room for k in range(n))]
    start = next((g for g in runs if g % n == 0), runs[0] if runs else None)
    return list(range(start, start + n)) if start is not None else room[:n]


def hold_for(store: WaitingGpus, pools: GpuPools, free: list[int], usable: set[int],
             capacity: Capacity) -> int | None:
    """The hold against starvation: while the first GPU job in claim order that this worker could
    run once its own jobs end (on its ``usable`` GPUs: free or running its jobs; a GPU that something
    else uses is not waited for) asks for 2 or more GPUs and does not fit the ``free`` ones, the
    worker claims no GPU job, shares of a GPU included: smaller ones would keep taking each GPU that
    frees. Returns the GPUs it waits for, or None."""
    if (capacity.gpus == 0 and capacity.share <= 0) or len(free) == len(usable):
        return None  # nothing could be claimed anyway, or every job it could run fits
    need = store.waiting_gpus(pools.largest(usable), capacity.grids)
    return need if need is not None and need >= 2 and not capacity.fits(need) else None
