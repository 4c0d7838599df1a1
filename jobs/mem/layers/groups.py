"""A batch that mixes subjects, as runs of consecutive samples, one run per subject (mem-spec 2).

The model runs its shared modules (the ViTs above all) once over the whole batch and its
per-subject modules once per run, then puts their outputs back in batch order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class SubjectGroups:
    """Rows ``sum(sizes[:i])`` to ``sum(sizes[:i + 1])`` of a batch are samples of ``subjects[i]``."""

    subjects: tuple[str, ...]
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.subjects) != len(self.sizes) or len(set(self.subjects)) != len(self.subjects):
            raise ValueError(f"one size per distinct subject, got {self.subjects} and {self.sizes}")

    def apply(self, modules: nn.ModuleDict, x: Tensor) -> Tensor:
        """``modules[subject]`` on each subject's rows of ``x``, the results in batch order."""
        parts = x.split(self.sizes)
        return torch.cat([modules[s](part) for s, part in zip(self.subjects, parts, strict=True)])

    def expand(self, per_subject: Sequence[Tensor]) -> Tensor:
        """One tensor per subject, repeated for each of its rows: [S] x [...] -> [B, ...]."""
        rows = [t.expand(n, *t.shape) for t, n in zip(per_subject, self.sizes, strict=True)]
        return torch.cat(rows)

    def slices(self) -> Iterator[tuple[str, slice]]:
        """(subject, its rows) in batch order."""
        start = 0
        for subject, n in zip(self.subjects, self.sizes, strict=True):
            yield subject, slice(start, start + n)
            start += n
