"""Behaviour embedder: 35 behaviour features -> a condition or passthrough vector (mem-spec 2.1)."""

from __future__ import annotations

from collections.abc import Sequence

from timm.layers import Mlp
from torch import Tensor, nn

from jobs.mem.layers.groups import SubjectGroups


class BehaviourEmbed(nn.Module):
    """Per-subject Linear(in -> D) + GELU, a shared Mlp(D -> D -> D), then dropout.

    The per-subject layer absorbs each subject's scale of the features; the shared Mlp and the
    dropout (the reference's Dropout1d on [B, D, 1] is plain element-wise dropout) are common.
    """

    def __init__(self, subjects: Sequence[str], in_dim: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.subject = nn.ModuleDict({s: nn.Sequential(nn.Linear(in_dim, dim), nn.GELU()) for s in subjects})
        self.shared = Mlp(dim, out_features=dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, bhv: Tensor, groups: SubjectGroups) -> Tensor:
        """bhv [B, ..., in_dim] -> [B, ..., dim]; each sample through its subject's layer."""
        return self.dropout(self.shared(groups.apply(self.subject, bhv)))
