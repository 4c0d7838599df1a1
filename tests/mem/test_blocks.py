"""The building blocks of the Mem model, each against what it must compute."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from jobs.mem.config import ConfigError, MemConfig, load_config, tiny
from jobs.mem.layers.backbone import ConditionedViT
from jobs.mem.layers.coords import fourier_features, normalise_coords
from jobs.mem.layers.frames import retina_features
from jobs.mem.layers.heads import SimpleConvBlocks
from jobs.mem.layers.lora import LoRALinear
from jobs.mem.layers.readout import apply_readout
from jobs.weights.install import install

from .helpers import plain_vit


def build_backbone(config: MemConfig, root: Path | None = None) -> ConditionedViT:
    model = config.MODEL
    return ConditionedViT(model.BACKBONE, config.DATASET.IMAGE_SIZE, model.COND.DIM, "MODEL.BACKBONE", root)


def test_lora_starts_as_its_base_layer() -> None:
    base = nn.Linear(12, 20)
    lora = LoRALinear(base, rank=4, scale=0.2)
    x = torch.randn(3, 12)
    torch.testing.assert_close(lora(x), base(x), rtol=0, atol=0)
    assert lora.down.weight.std().item() == pytest.approx(1 / 4, rel=0.3)
    assert lora.down.bias is None and lora.up.bias is None
    nn.init.normal_(lora.up.weight)
    torch.testing.assert_close(lora(x), base(x) + 0.2 * lora.up(lora.down(x)))
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(3, 20), rank=4, scale=0.2)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_patched_backbone_equals_the_pretrained_vit_at_init(tmp_path: Path, suffix: str) -> None:
    tiny_config = load_config(tiny())
    torch.manual_seed(1)
    plain = plain_vit(tiny_config).eval()
    weights = tmp_path / f"vit{suffix}"
    if suffix == ".pth":
        torch.save(plain.state_dict(), weights)
    else:
        save_file(plain.state_dict(), weights)
    install(tmp_path / "root", "vit", file=weights, model=tiny_config.MODEL.BACKBONE.NAME)
    config = load_config({**tiny(), "MODEL.BACKBONE.WEIGHTS": "vit"})
    torch.manual_seed(2)  # different random init: only the loaded weights can make them agree
    backbone = build_backbone(config, tmp_path / "root")
    assert backbone.weights is not None and backbone.weights.name == "vit"
    x, c = torch.randn(2, 3, 32, 32), torch.randn(2, config.MODEL.COND.DIM)
    layers = config.MODEL.BACKBONE.LAYERS
    taps = backbone(x, c)
    expected = plain.forward_intermediates(x, indices=layers, return_prefix_tokens=True, intermediates_only=True)
    assert len(taps) == len(layers)
    for layer, (grid, cls), (plain_grid, prefix) in zip(layers, taps, expected, strict=True):
        torch.testing.assert_close(grid, plain_grid)
        if layer == len(plain.blocks) - 1:
            torch.testing.assert_close(cls, prefix[:, 0])
        else:
            torch.testing.assert_close(cls, torch.cat([plain_grid.mean((2, 3)), plain_grid.amax((2, 3))], dim=1))

    # the condition and the LoRA updates are wired in: once they are non-zero, the output moves
    block = backbone.vit.blocks[0]
    nn.init.normal_(block.modulation.weight)
    conditioned = backbone(x, c)[0][0]
    assert not torch.allclose(conditioned, taps[0][0])
    assert not torch.allclose(conditioned, backbone(x, -c)[0][0])
    nn.init.zeros_(block.modulation.weight)
    nn.init.normal_(block.block.mlp.fc1.up.weight)
    assert not torch.allclose(backbone(x, c)[0][0], taps[0][0])


def test_only_lora_and_adaln_train_in_the_backbone() -> None:
    config = load_config(tiny())
    backbone = build_backbone(config)
    trainable = {name for name, p in backbone.named_parameters() if p.requires_grad}
    assert trainable
    assert all(name.endswith((".down.weight", ".up.weight", ".modulation.weight")) for name in trainable)
    frozen = {name for name, p in backbone.named_parameters() if not p.requires_grad}
    assert {"vit.pos_embed", "vit.cls_token", "vit.blocks.0.block.attn.qkv.base.weight"} <= frozen
    dim, depth, rank = 32, 4, config.MODEL.BACKBONE.LORA.RANK
    lora = rank * (dim + 3 * dim) + rank * 2 * dim + 2 * rank * (dim + 4 * dim)  # qkv, proj, fc1 + fc2
    adaln = config.MODEL.COND.DIM * 6 * dim
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == depth * (lora + adaln)


def test_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    weights = tmp_path / "other.pth"
    shallower = load_config({**tiny(), "MODEL.BACKBONE.KWARGS": {**tiny()["MODEL.BACKBONE.KWARGS"], "depth": 2}})
    torch.save(plain_vit(shallower).state_dict(), weights)
    install(tmp_path, "shallow", file=weights, model=shallower.MODEL.BACKBONE.NAME)
    config = load_config({**tiny(), "MODEL.BACKBONE.WEIGHTS": "shallow"})
    with pytest.raises(ValueError, match=r"^MODEL\.BACKBONE\.WEIGHTS: shallow does not fit .*blocks\.2\."):
        build_backbone(config, tmp_path)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"MODEL.BACKBONE.CLS_DIMS": [64, 64, 64]}, "MODEL.BACKBONE.CLS_DIMS"),  # last block is the raw CLS
        ({"MODEL.BACKBONE.FEATURE_DIM": 16, "MODEL.BACKBONE.CLS_DIMS": [32, 32, 16]}, "MODEL.BACKBONE.FEATURE_DIM"),
        ({"MODEL.BACKBONE.LAYERS": [0, 2, 4]}, "MODEL.BACKBONE.LAYERS"),
    ],
)
def test_backbone_dims_are_checked_against_the_model(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        build_backbone(load_config({**tiny(), **overrides}))


def test_positional_encoding_is_the_reference_formula() -> None:
    reference = torch.tensor([[0.0, 0.0, 0.0], [10.0, 40.0, 20.0], [5.0, -10.0, 3.0]])
    positions = normalise_coords(reference, reference)
    assert positions.amin(0).tolist() == [0.0, 0.0, 0.0]
    assert positions.amax(0).tolist() == pytest.approx([20.0, 100.0, 40.0])  # widest axis spans 0..100
    features = fourier_features(positions)
    assert features.shape == (3, 3 * 32 * 2)
    axis, k, point = 1, 5, 1
    omega = 100 ** (k / 31 * (1 / 32 - 1))
    p = (40.0 - -10.0) * 100 / 50
    grouped = features.view(3, 3, 32, 2)  # axis, frequency, (sin, cos)
    assert grouped[point, axis, k].tolist() == pytest.approx([math.sin(omega * p), math.cos(omega * p)], abs=1e-5)
    torch.testing.assert_close(grouped[:, :, 0, 1], torch.cos(positions))  # omega_0 = 1


def test_conv_head_reduces_only_wide_inputs() -> None:
    wide, narrow = SimpleConvBlocks(32, 16, 3, 3, max_dim=24), SimpleConvBlocks(16, 8, 5, 3, max_dim=24)
    assert isinstance(wide.reduce, nn.Conv2d) and wide.reduce.kernel_size == (1, 1)
    assert isinstance(narrow.reduce, nn.Identity)
    assert len(narrow.blocks) == 2 and narrow.blocks[0][0].kernel_size == (5, 5)
    assert all(m.bias is None for m in narrow.modules() if isinstance(m, nn.Conv2d))
    assert wide(torch.randn(2, 32, 4, 4)).shape == (2, 16, 4, 4)


def test_retina_features_sample_the_grid_at_mu_and_mix_layers() -> None:
    # two layers of 4x4 grids; with align_corners=False pixel (row i, col j) sits at ((2j+1)/4-1, (2i+1)/4-1)
    grids = [torch.arange(16.0).view(1, 1, 4, 4), 100 + torch.arange(16.0).view(1, 1, 4, 4)]
    cls = torch.tensor([[[1000.0, 2000.0]]])  # [B=1, W=1, L=2]
    mu = torch.tensor([[-0.75, -0.75], [0.25, 0.75], [5.0, 5.0]])  # pixel (0,0), pixel (3,2), outside
    w = torch.tensor([[1.0, 0.0], [0.25, 0.75], [0.5, 0.5]])
    x0 = retina_features(grids, cls, mu, w)
    assert x0.shape == (1, 3, 1)
    expected = [0 + 1000, 0.25 * (14 + 1000) + 0.75 * (114 + 2000), 0.5 * 1000 + 0.5 * 2000]
    assert x0[0, :, 0].tolist() == pytest.approx(expected)


def test_readout_is_the_mean_over_the_concatenated_feature() -> None:
    local, shared = torch.randn(2, 5, 6), torch.randn(2, 4)
    weight, bias = torch.randn(5, 10), torch.randn(5)
    h = torch.cat([local, shared[:, None].expand(-1, 5, -1)], dim=-1)
    torch.testing.assert_close(apply_readout(local, shared, weight, bias), (h * weight).mean(-1) + bias)
