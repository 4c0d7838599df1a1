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
    """T=0: behaviour-conditioned ViT-B; a conv head (unless not ``spatial``: no RetinaMapper reads
    the grids) and a class-token Mlp per tapped layer."""

    def __init__(
        self,
        config: ModelConfig,
        img_size: int,
        subjects: Sequence[str],
        weights_root: Path | None = None,
        spatial: bool = True,
    ) -> None:
        super().__init__()
        cond, head, width = config.COND, config.CONV_HEAD, config.conv_width
        self.behav_embed = BehaviourEmbed(subjects, cond.IN_DIM, cond.DIM, cond.DROPOUT)
        self.backbone = ConditionedViT(config.BACKBONE, img_size, cond.DIM, "MODEL.BACKBONE", weights_root)
        feature_dim = config.BACKBONE.FEATURE_DIM
        self.conv_heads = nn.ModuleList(
            SimpleConvBlocks(feature_dim, width, head.KERNEL, head.DEPTH, head.MAX_DIM)
            for _ in (config.BACKBONE.LAYERS if spatial else ())
        )
        self.cls_heads = class_token_mlps(config.BACKBONE.CLS_DIMS, width)

    def forward(self, img: Tensor, bhv: Tensor, groups: SubjectGroups) -> tuple[list[Tensor], Tensor]:
        """-> (per-layer grids [B, W, h, w], none if not spatial; class features [B, W, L])."""
        taps = self.backbone(img, self.behav_embed(bhv, groups))
        grids = [head(grid) for head, (grid, _) in zip(self.conv_heads, taps, strict=False)]
        cls = torch.stack([head(c) for head, (_, c) in zip(self.cls_heads, taps, strict=True)], dim=-1)
        return grids, cls


def retina_features(
    grids: Sequence[Tensor], cls: Tensor, mu: Tensor | None, layer_weights: Tensor | None, n: int | None = None
) -> Tensor:
    """Per-voxel T=0 feature x0 [B, n, W] = sum_l w_l * (grid_sample(grid_l, mu) + cls_l).

    mu [n, 2] are the voxels' receptive-field centres (the same for every sample), layer_weights
    [n, L] their LayerSelector weights; sampling is bilinear with zero padding, align_corners=False.
    As the reference without a LayerSelector (layer_weights None): the class features' mean plus
    the plain sum of the samples; without a RetinaMapper (mu None): the class features alone, for
    ``n`` voxels (needed only when both are None).
    """
    batch = cls.shape[0]
    if layer_weights is None:
        n = mu.shape[0] if mu is not None else n
        assert n is not None, "retina_features: n is needed without mu and layer_weights"
        x = cls.mean(-1, keepdim=True).expand(-1, -1, n)  # [B, W, n]
    else:
        x = cls @ layer_weights.T
    if mu is not None:
        sample_at = mu[None, :, None, :].expand(batch, -1, -1, -1)  # [B, n, 1, 2]
        for layer, grid in enumerate(grids):
            sampled = F.grid_sample(grid, sample_at, mode="bilinear", padding_mode="zeros", align_corners=False)
            sampled = sampled.squeeze(-1)
            x = x + (sampled if layer_weights is None else sampled * layer_weights[:, layer])
    return x.transpose(1, 2)


class PreviousFrame(nn.Module):
    """T=-1: behaviour-conditioned ViT-S; class-token Mlp per tapped layer, averaged -> x_prev [B, W]."""

    def __init__(
        self, config: ModelConfig, img_size: int, subjects: Sequence[str], weights_root: Path | None = None
    ) -> None:
        super().__init__()
        cond, small = config.COND, config.BACKBONE_SMALL
        self.behav_embed = BehaviourEmbed(subjects, cond.IN_DIM, cond.DIM, cond.DROPOUT)
        self.backbone = ConditionedViT(small, img_size, cond.DIM, "MODEL.BACKBONE_SMALL", weights_root)
        self.cls_heads = class_token_mlps(small.CLS_DIMS, config.prev_width)

    def forward(self, img: Tensor, bhv: Tensor, groups: SubjectGroups) -> Tensor:
        taps = self.backbone(img, self.behav_embed(bhv, groups))
        return torch.stack([head(c) for head, (_, c) in zip(self.cls_heads, taps, strict=True)]).mean(0)
