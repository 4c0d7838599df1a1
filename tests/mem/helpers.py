"""Helpers shared by the Mem tests."""

from __future__ import annotations

import timm
from torch import nn

from jobs.mem.config import MemConfig


def plain_vit(config: MemConfig, section: str = "BACKBONE") -> nn.Module:
    """The unpatched timm model that the backbone ``MODEL.<section>`` is built from."""
    backbone = getattr(config.MODEL, section)
    return timm.create_model(
        backbone.NAME, pretrained=False, num_classes=0, img_size=config.DATASET.IMAGE_SIZE, **backbone.KWARGS
    )
