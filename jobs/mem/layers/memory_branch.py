"""The memory branch: cached features of frames T=-2..-N compressed to one vector (mem-spec 2.6)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from timm.layers import Mlp
from torch import Tensor, nn

from jobs.mem.config import ModelConfig
from jobs.mem.layers.behaviour_embed import BehaviourEmbed
from jobs.mem.layers.groups import SubjectGroups

TIME_FREQ_DIM = 256  # width of the sinusoidal time encoding
TIME_MAX_PERIOD = 10_000.0


class SubjectTimeEmbed(nn.Module):
    """Frame offset t -> [T, dim]: sinusoidal [cos, sin], per-subject Linear, shared SiLU + Linear.

    The per-subject layer lets each subject have its own clock (the reference's rationale).
    """

    def __init__(self, subjects: Sequence[str], dim: int) -> None:
        super().__init__()
        self.subject = nn.ModuleDict({s: nn.Linear(TIME_FREQ_DIM, dim) for s in subjects})
        self.shared = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor, subject: str) -> Tensor:
        half = TIME_FREQ_DIM // 2
        freqs = torch.exp(-math.log(TIME_MAX_PERIOD) * torch.arange(half, device=t.device) / half)
        angles = t.float()[:, None] * freqs
        return self.shared(self.subject[subject](torch.cat([angles.cos(), angles.sin()], dim=-1)))


class MemoryBranch(nn.Module):
    """x_mem [B, MERGE_WIDTH] from the cached features and behaviour of frames T=-2..-N.

    Per frame: Mlp([feature, behaviour embedding, time embedding]) -> WIDTH. The frames are then
    flattened in order, compressed by a per-subject Linear + GELU to 4*MERGE_WIDTH and merged by a
    shared Mlp.
    """

    def __init__(
        self, config: ModelConfig, n_frames: int, subjects: Sequence[str], bhv_dim: int | None = None
    ) -> None:
        super().__init__()
        cond, small = config.COND, config.BACKBONE_SMALL
        frame_dim = config.PREV_FEAT.DIM + cond.DIM + small.T_DIM
        hidden = 4 * config.merge_width
        self.n_frames = n_frames
        self.behav_embed = BehaviourEmbed(subjects, bhv_dim or cond.IN_DIM, cond.DIM, cond.DROPOUT)
        self.time_embed = SubjectTimeEmbed(subjects, small.T_DIM)
        self.frame_mlp = Mlp(frame_dim, out_features=config.prev_width)
        self.compress = nn.ModuleDict(
            {s: nn.Sequential(nn.Linear(n_frames * config.prev_width, hidden), nn.GELU()) for s in subjects}
        )
        self.merge = Mlp(hidden, out_features=config.merge_width)

    def forward(self, feats: Tensor, bhvs: Tensor, groups: SubjectGroups) -> Tensor:
        """feats [B, T, F] cached features and bhvs [B, T, 35] behaviour of T=-2, -3, ... (t = 0, 1, ...)."""
        n_frames = feats.shape[1]
        if n_frames != self.n_frames or bhvs.shape[1] != n_frames:
            raise ValueError(f"expected {self.n_frames} memory frames, got {n_frames} and {bhvs.shape[1]}")
        c = self.behav_embed(bhvs, groups)
        steps = torch.arange(n_frames, device=feats.device)
        t = groups.expand([self.time_embed(steps, s) for s in groups.subjects])  # [B, T, T_DIM]
        # the feature cache is float16 on disk: follow the embeddings' dtype (fp32, or the autocast one)
        x = self.frame_mlp(torch.cat([feats.to(c.dtype), c, t], dim=-1))  # [B, T, WIDTH]
        return self.merge(groups.apply(self.compress, x.flatten(1)))
