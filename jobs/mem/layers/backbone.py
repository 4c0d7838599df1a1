"""A frozen timm ViT with LoRA and AdaLN-zero, returning its tapped block outputs (mem-spec 2.1-2.2).

Its weights are the installed weights the config names on the memq root, verified by sha256
(jobs/weights), or random ones when the config says ``random``: nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jobs.mem.config import BackboneConfig, ConfigError
from jobs.mem.layers.adaln import AdaLNZeroBlock
from jobs.mem.layers.lora import add_lora
from jobs.weights.load import load_pretrained


class ConditionedViT(nn.Module):
    """timm ViT, frozen, with LoRA on every block's linear layers and an AdaLN-zero patch per block.

    Only the LoRA and AdaLN parameters train. ``forward`` runs the blocks by hand (no final norm)
    up to the last tapped one and returns, per tap, the patch grid [B, C, h, w] and the class
    feature: concat(avg pool, max pool) of the grid [B, 2C], except at the network's last block,
    where it is the raw CLS token [B, C].
    """

    def __init__(
        self, config: BackboneConfig, img_size: int, cond_dim: int, key: str, weights_root: Path | None = None
    ) -> None:
        super().__init__()
        vit = timm.create_model(config.NAME, pretrained=False, num_classes=0, img_size=img_size, **config.KWARGS)
        # the installed weights loaded (verified), None for random init
        self.weights = load_pretrained(vit, config.WEIGHTS, f"{key}.WEIGHTS", config.NAME, weights_root)
        vit.requires_grad_(False)
        for i, block in enumerate(vit.blocks):
            add_lora(block, config.LORA.RANK, config.LORA.SCALE)
            vit.blocks[i] = AdaLNZeroBlock(block, cond_dim, config.ADAPTIVE_LN.SCALE)
        self.vit = vit
        self.layers = list(config.LAYERS)
        self._check(config, key)

    @property
    def cls_dims(self) -> list[int]:
        last = len(self.vit.blocks) - 1
        return [self.vit.embed_dim * (1 if layer == last else 2) for layer in self.layers]

    def _check(self, config: BackboneConfig, key: str) -> None:
        depth, width = len(self.vit.blocks), self.vit.embed_dim
        if self.vit.cls_token is None or self.vit.dynamic_img_size:
            raise ConfigError(f"{key}.NAME: {config.NAME} needs a class token and a fixed image size")
        if self.layers[-1] >= depth:
            raise ConfigError(f"{key}.LAYERS: {self.layers} taps beyond the {depth} blocks of {config.NAME}")
        if width != config.FEATURE_DIM:
            raise ConfigError(f"{key}.FEATURE_DIM: {config.NAME} has width {width}, not {config.FEATURE_DIM}")
        if self.cls_dims != config.CLS_DIMS:
            raise ConfigError(f"{key}.CLS_DIMS: must be {self.cls_dims} for LAYERS {self.layers}")

    def forward(self, x: Tensor, c: Tensor) -> list[tuple[Tensor, Tensor]]:
        """x [B, 3, H, W] images, c [B, cond_dim] condition -> per tap (grid, class feature)."""
        vit = self.vit
        tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        taps = []
        for i, block in enumerate(vit.blocks[: self.layers[-1] + 1]):
            tokens = block(tokens, c)
            if i in self.layers:
                taps.append(self._tap(tokens, i))
        return taps

    def _tap(self, tokens: Tensor, index: int) -> tuple[Tensor, Tensor]:
        patches = tokens[:, self.vit.num_prefix_tokens :]
        grid = patches.transpose(1, 2).unflatten(2, self.vit.patch_embed.grid_size)  # [B, C, h, w]
        if index == len(self.vit.blocks) - 1:
            return grid, tokens[:, 0]
        pooled = torch.cat([F.adaptive_avg_pool2d(grid, 1), F.adaptive_max_pool2d(grid, 1)], dim=1)
        return grid, pooled.flatten(1)
