"""AdaLN-zero: a timm ViT block modulated by a condition vector (mem-spec 2.1)."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class AdaLNZeroBlock(nn.Module):
    """Runs ``block`` with shift/scale/gate from ``c`` around its attention and MLP branches.

    x <- x + (1 + gate) * LayerScale(branch(norm(x) * (1 + scale) + shift)) for each branch, with
    (shift, scale, gate) x 2 = ``scale * tanh(Linear(c))``. The linear layer starts at zero, so
    at init the block is exactly the unmodulated (pretrained) one.
    """

    def __init__(self, block: Block, cond_dim: int, scale: float) -> None:
        super().__init__()
        self.block = block
        self.scale = scale
        self.modulation = nn.Linear(cond_dim, 6 * block.norm1.normalized_shape[0], bias=False)
        nn.init.zeros_(self.modulation.weight)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """x [B, L, C] tokens, c [B, cond_dim]."""
        b = self.block
        mod = (torch.tanh(self.modulation(c)) * self.scale).unsqueeze(1)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        x = x + b.drop_path1((1 + gate1) * b.ls1(b.attn(_modulate(b.norm1(x), shift1, scale1))))
        return x + b.drop_path2((1 + gate2) * b.ls2(b.mlp(_modulate(b.norm2(x), shift2, scale2))))
