"""LOSS.SYNC: per-voxel loss weights from the trend of each voxel's validation r (mem-spec 3.2).

After every validation epoch the per-voxel r vector v of each subject updates an EMA of its
change, ``running_grad <- beta * running_grad + (1 - beta) * (v - v_prev)``. The weights are an
update rule applied to ``running_grad``, min-max normalised to [0, 1] jointly over all subjects'
voxels: voxels whose r still rises weigh about 1, voxels that stalled or fall about 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from jobs.mem.config import SyncConfig


class SyncWeights:
    """EMA state per subject and the loss weights derived from it."""

    def __init__(self, config: SyncConfig) -> None:
        self.config = config
        self.prev_r: dict[str, Tensor] = {}
        self.running_grad: dict[str, Tensor] = {}
        self.weights: dict[str, Tensor] = {}

    def update(self, r: Mapping[str, Tensor]) -> None:
        """Feed one validation epoch's per-voxel r of every subject; recompute the weights."""
        beta = self.config.EMA_BETA
        for subject, v in r.items():
            prev = self.prev_r.get(subject, torch.zeros_like(v))
            grad = self.running_grad.get(subject, torch.zeros_like(v))
            self.running_grad[subject] = beta * grad.to(v.device) + (1 - beta) * (v - prev.to(v.device))
            self.prev_r[subject] = v
        self._reweight()

    def _rule(self, g: Tensor) -> Tensor:
        c = self.config
        match c.UPDATE_RULE:
            case "raw":
                return g
            case "exp":
                return torch.exp(g * c.EXP_SCALE + c.EXP_SHIFT)
            case "square":
                return g**2
            case "log":
                return torch.log(g + c.LOG_SHIFT)
            case "norm":
                return ((g - g.mean()) / g.std()).clamp(-3, 3)

    def _reweight(self) -> None:
        values = {s: self._rule(g) for s, g in self.running_grad.items()}
        joint = torch.cat([v.flatten() for v in values.values()])
        low, span = joint.min(), joint.max() - joint.min()
        # all equal (e.g. after one update with a constant r): no voxel is preferred
        self.weights = {s: (v - low) / span if span > 0 else torch.ones_like(v) for s, v in values.items()}

    def weight(self, subject: str, device: torch.device) -> Tensor | None:
        """Loss weights of all ``subject``'s voxels, on ``device``; None before the first update."""
        if subject not in self.weights:
            return None
        self.weights[subject] = self.weights[subject].to(device)
        return self.weights[subject]

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        """Plain tensors on the CPU (the resume file is read with ``weights_only=True``)."""
        return {
            "prev_r": {s: v.cpu() for s, v in self.prev_r.items()},
            "running_grad": {s: v.cpu() for s, v in self.running_grad.items()},
        }

    def load_state_dict(self, state: Mapping[str, Mapping[str, Tensor]]) -> None:
        self.prev_r = dict(state["prev_r"])
        self.running_grad = dict(state["running_grad"])
        if self.running_grad:
            self._reweight()
