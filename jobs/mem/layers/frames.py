"""The two image branches: the current frame T=0 (mem-spec 2.2, 2.4) and the previous frame T=-1 (2.5)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jobs.mem.config import ModelConfig
from jobs.mem.layers.backbone import ConditionedViT
from jobs.mem.layers.behaviour_embed import BehaviourEmbed
from jobs.mem.layers.groups import SubjectGroups
from jobs.mem.layers.heads import SimpleConvBlocks, class_token_mlps


class CurrentFrame(nn.Module):
    """T=0: behaviour-conditioned ViT-B; a conv head (unless ``grids`` is False: no RetinaMapper
    reads them) and a class-token Mlp per tapped layer."""

    def __init__(
        self,
        config: ModelConfig,
        img_size: int,
        subjects: Sequence[str],
        weights_root: Path | None = None,
        *,
        bhv_dim: int | None = None,
        grids: bool = True,
    ) -> None:
        super().__init__()
        cond, head, width = config.COND, config.CONV_HEAD, config.conv_width
        self.behav_embed = BehaviourEmbed(subjects, bhv_dim or cond.IN_DIM, cond.DIM, cond.DROPOUT)
        self.backbone = ConditionedViT(config.BACKBONE, img_size, cond.DIM, "MODEL.BACKBONE", weights_root)
        feature_dim = config.BACKBONE.FEATURE_DIM
        self.conv_heads = nn.ModuleList(
            SimpleConvBlocks(feature_dim, width, head.KERNEL, head.DEPTH, head.MAX_DIM)
            for _ in (config.BACKBONE.LAYERS if grids else ())
        )
        self.cls_heads = class_token_mlps(config.BACKBONE.CLS_DIMS, width)

    def forward(self, img: Tensor, bhv: Tensor, groups: SubjectGroups) -> tuple[list[Tensor], Tensor]:
        """-> (per-layer grids [B, W, h, w], none without conv heads; class features [B, W, L])."""
        taps = self.backbone(img, self.behav_embed(bhv, groups))
        grids = [head(grid) for head, (grid, _) in zip(self.conv_heads, taps, strict=False)]
        cls = torch.stack([head(c) for head, (_, c) in zip(self.cls_heads, taps, strict=True)], dim=-1)
        return grids, cls


def retina_features(
    grids: Sequence[Tensor], cls: Tensor, mu: Tensor | None, layer_weights: Tensor | None, n_voxels: int | None = None
) -> Tensor:
    """Per-voxel T=0 feature x0 [B, n, W] = sum_l w_l * (grid_sample(grid_l, mu) + cls_l).

    mu [n, 2] are the voxels' receptive-field centres (the same for every sample), layer_weights
    [n, L] their LayerSelector weights; sampling is bilinear with zero padding, align_corners=False.
    As the reference does without a module (ABLATION.*): mu None leaves out the grids (x0 is the
    class part alone); layer_weights None averages the class features over the layers and sums
    the sampled grids; then ``n_voxels`` says how many voxels (when mu is None too).
    """
    if layer_weights is None:
        n = n_voxels if mu is None else len(mu)
        if n is None:
            raise ValueError("retina_features without mu and layer_weights needs n_voxels")
        x = cls.mean(-1, keepdim=True).expand(-1, -1, n)  # [B, W, n]
    else:
        x = cls @ layer_weights.T  # [B, W, n]
    if mu is not None:
        sample_at = mu[None, :, None, :].expand(cls.shape[0], -1, -1, -1)  # [B, n, 1, 2]
        for layer, grid in enumerate(grids):
            sampled = F.grid_sample(grid, sample_at, mode="bilinear", padding_mode="zeros", align_corners=False)
            x = x + sampled.squeeze(-1) * (1.0 if layer_weights is None else layer_weights[:, layer])
    return x.transpose(1, 2)


class PreviousFrame(nn.Module):
    """T=-1: behaviour-conditioned ViT-S; class-token Mlp per tapped layer, averaged -> x_prev [B, W]."""

    def __init__(
        self,
        config: ModelConfig,
        img_size: int,
        subjects: Sequence[str],
        weights_root: Path | None = None,
        *,
        bhv_dim: int | None = None,
    ) -> None:
        super().__init__()
        cond, small = config.COND, config.BACKBONE_SMALL
        self.behav_embed = BehaviourEmbed(subjects, bhv_dim or cond.IN_DIM, cond.DIM, cond.DROPOUT)
        self.backbone = ConditionedViT(small, img_size, cond.DIM, "MODEL.BACKBONE_SMALL", weights_root)
        self.cls_heads = class_token_mlps(small.CLS_DIMS, config.prev_width)

    def forward(self, img: Tensor, bhv: Tensor, groups: SubjectGroups) -> Tensor:
        taps = self.backbone(img, self.behav_embed(bhv, groups))
        return torch.stack([head(c) for head, (_, c) in zip(self.cls_heads, taps, strict=True)]).mean(0)
