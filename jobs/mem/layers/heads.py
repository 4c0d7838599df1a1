"""Per-layer heads on the tapped backbone outputs (mem-spec 2.2 steps 3-4)."""

from __future__ import annotations

from collections.abc import Sequence

from timm.layers import LayerNorm2d, Mlp
from torch import Tensor, nn


class SimpleConvBlocks(nn.Module):
    """Conv head of one tapped layer: [B, C, h, w] -> [B, out_dim, h, w].

    An optional 1x1 reduction (only when C > max_dim), then depth-1 residual blocks of
    conv(k, same, no bias) + LayerNorm2d + SiLU, then conv(k) to ``out_dim`` + SiLU.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: int, depth: int, max_dim: int) -> None:
        super().__init__()
        hidden = min(in_dim, max_dim)
        self.reduce = nn.Conv2d(in_dim, hidden, 1, bias=False) if in_dim > max_dim else nn.Identity()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(hidden, hidden, kernel, padding="same", bias=False), LayerNorm2d(hidden), nn.SiLU())
            for _ in range(depth - 1)
        )
        self.out = nn.Sequential(nn.Conv2d(hidden, out_dim, kernel, padding="same", bias=False), nn.SiLU())

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduce(x)
        for block in self.blocks:
            x = x + block(x)
        return self.out(x)


def class_token_mlps(in_dims: Sequence[int], out_dim: int) -> nn.ModuleList:
    """One Mlp(d -> d -> out_dim) per tapped layer, for its class feature."""
    return nn.ModuleList(Mlp(d, out_features=out_dim) for d in in_dims)
