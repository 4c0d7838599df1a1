"""The reference implementation's network, for tests: its state-dict layout and its forward pass.

Written from reading huzeyann/MemoryEncodingModel (mem/models.py, backbone.py, blocks.py,
behav_embed.py, topyneck.py, point_pe.py), independently of jobs/mem/reference/convert.py: tensors are
named as the reference's modules name them and the forward pass reads them by those names with
plain torch ops, in eval mode. A tensor the converter puts in the wrong place changes MemModel's
predictions but not these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from jobs.mem.config import MemConfig

LORA_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
EMBEDDERS = ("behav_embed", "behav_pt", "behav_embed_prev", "behav_pt_prev", "behav_embed_prev_feat")


def _dims(config: MemConfig) -> dict[str, int]:
    m = config.MODEL
    return {"behav_embed": m.COND.DIM, "behav_embed_prev": m.COND.DIM, "behav_embed_prev_feat": m.COND.DIM,
            "behav_pt": m.passthrough_dim, "behav_pt_prev": m.passthrough_dim}


def layout(config: MemConfig, n_voxels: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """Shapes of the trained tensors of the reference network (names without ``model.``)."""
    m, shapes = config.MODEL, {}
    cond_in = m.COND.IN_DIM
    for name, dim in _dims(config).items():
        for s in n_voxels:
            shapes |= {f"{name}.embed.{s}.0.weight": (dim, cond_in), f"{name}.embed.{s}.0.bias": (dim,)}
        shapes |= {f"{name}.mlp.fc1.weight": (dim, dim), f"{name}.mlp.fc1.bias": (dim,),
                   f"{name}.mlp.fc2.weight": (dim, dim), f"{name}.mlp.fc2.bias": (dim,)}
    width, head = m.conv_width, m.CONV_HEAD
    c = m.BACKBONE.FEATURE_DIM
    ch = head.MAX_DIM if c > head.MAX_DIM else max(c, width)
    for layer, cls_dim in zip(m.BACKBONE.LAYERS, m.BACKBONE.CLS_DIMS, strict=True):
        conv = f"conv_blocks.blocks_dict.{layer}"
        if c > head.MAX_DIM:
            shapes[f"{conv}.reduce_block.weight"] = (ch, c, 1, 1)
        for j in range(head.DEPTH - 1):
            shapes |= {f"{conv}.block.{j}.0.weight": (ch, ch, head.KERNEL, head.KERNEL),
                       f"{conv}.block.{j}.1.weight": (ch,), f"{conv}.block.{j}.1.bias": (ch,)}
        shapes[f"{conv}.block.{head.DEPTH - 1}.0.weight"] = (width, ch, head.KERNEL, head.KERNEL)
        shapes |= _mlp(f"cls_blocks.mlp_dict.{layer}", cls_dim, width)
    for layer, cls_dim in zip(m.BACKBONE_SMALL.LAYERS, m.BACKBONE_SMALL.CLS_DIMS, strict=True):
        shapes |= _mlp(f"cls_blocks_prev.mlp_dict.{layer}", cls_dim, m.prev_width)
    hidden, d_model, frames = m.COORDS_MLP.WIDTH, m.d_model, config.DATASET.N_PREV_FRAMES - 1
    t_dim, frame_dim = m.BACKBONE_SMALL.T_DIM, m.PREV_FEAT.DIM + m.COND.DIM + m.BACKBONE_SMALL.T_DIM
    for s, n in n_voxels.items():
        for name, out in (("layer_selector", len(m.BACKBONE.LAYERS)), ("retina_mapper", 2)):
            shapes |= {f"{name}.{s}.mlp.1.weight": (hidden, 192), f"{name}.{s}.mlp.1.bias": (hidden,),
                       f"{name}.{s}.mlp.3.weight": (hidden, hidden), f"{name}.{s}.mlp.3.bias": (hidden,),
                       f"{name}.{s}.mlp.5.weight": (out, hidden), f"{name}.{s}.mlp.5.bias": (out,)}
        shapes |= {f"time_emb.subject_layers.{s}.weight": (t_dim, 256), f"time_emb.subject_layers.{s}.bias": (t_dim,),
                   f"prev_compress.subject_layer.{s}.0.weight": (4 * m.merge_width, frames * m.prev_width),
                   f"prev_compress.subject_layer.{s}.0.bias": (4 * m.merge_width,),
                   f"voxel_outs_weight.{s}.weight": (n, d_model), f"voxel_outs_weight.{s}.bias": (n,)}
    shapes |= {"time_emb.mlp.1.weight": (t_dim, t_dim), "time_emb.mlp.1.bias": (t_dim,)}
    shapes |= _mlp("prev_feat_embed.mlp", frame_dim, m.prev_width)
    shapes |= _mlp("prev_compress.merge_layer", 4 * m.merge_width, m.merge_width)
    return shapes


def _mlp(prefix: str, dim: int, out: int) -> dict[str, tuple[int, ...]]:
    """timm's Mlp(dim -> dim -> out)."""
    return {f"{prefix}.fc1.weight": (dim, dim), f"{prefix}.fc1.bias": (dim,),
            f"{prefix}.fc2.weight": (out, dim), f"{prefix}.fc2.bias": (out,)}


def backbone_tensors(name: str, plain: Mapping[str, Tensor], lora_rank: int, cond_dim: int,
                     gen: torch.Generator) -> dict[str, Tensor]:
    """The reference's ``<name>.vision_model.*``: a plain DINOv2 state (frozen), each block wrapped
    (``.block.``, LoRA ``.fc`` / ``.fc_lora``, ``.adaLN``), random LoRA and AdaLN weights, a mask token."""
    out: dict[str, Tensor] = {}
    width = plain["cls_token"].shape[-1]
    for key, value in plain.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            rest = ".".join(parts[2:])
            for lin in LORA_LINEARS:
                rest = rest.replace(f"{lin}.", f"{lin}.fc.")
            key = f"blocks.{parts[1]}.block.{rest}"
        out[f"{name}.vision_model.{key}"] = value.clone()
    out[f"{name}.vision_model.mask_token"] = torch.zeros(1, width)
    depth = 1 + max(int(k.split(".")[1]) for k in plain if k.startswith("blocks."))
    for i in range(depth):
        block = f"{name}.vision_model.blocks.{i}"
        for lin in LORA_LINEARS:
            w = plain[f"blocks.{i}.{lin}.weight"]
            out[f"{block}.block.{lin}.fc_lora.down.weight"] = 0.3 * torch.randn(lora_rank, w.shape[1], generator=gen)
            out[f"{block}.block.{lin}.fc_lora.up.weight"] = 0.3 * torch.randn(w.shape[0], lora_rank, generator=gen)
        out[f"{block}.adaLN.adaLN_modulation.0.weight"] = 0.3 * torch.randn(6 * width, cond_dim, generator=gen)
    return out


def reference_state(config: MemConfig, coords: Mapping[str, Tensor], plain_vits: Mapping[str, Mapping[str, Tensor]],
                    seed: int = 0) -> dict[str, Tensor]:
    """A PlVEModel state dict with random trained tensors: ``model.*`` and ``coord_dict.*``.

    ``coords``: per subject, the coordinates of its modelled voxels in the reference's order;
    ``plain_vits``: the frozen ``backbone`` and ``backbone_prev`` DINOv2 states.
    """
    gen = torch.Generator().manual_seed(seed)
    shapes = layout(config, {s: len(c) for s, c in coords.items()})
    net = {k: 0.3 * torch.randn(shape, generator=gen) for k, shape in shapes.items()}
    for key in net:
        if ".block." in key and key.endswith(".1.weight") and key.startswith("conv_blocks"):  # LayerNorm2d scale
            net[key] = 1 + net[key]
    for name, section in (("backbone", config.MODEL.BACKBONE), ("backbone_prev", config.MODEL.BACKBONE_SMALL)):
        net |= backbone_tensors(name, plain_vits[name], section.LORA.RANK, config.MODEL.COND.DIM, gen)
    return {**{f"model.{k}": v for k, v in net.items()}, **{f"coord_dict.{s}": c for s, c in coords.items()}}


# ---- the forward pass, eval mode -------------------------------------------------------------


def _linear(sd: Mapping[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    return F.linear(x, sd[f"{prefix}.weight"], sd.get(f"{prefix}.bias"))


def _mlp_forward(sd: Mapping[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    return _linear(sd, f"{prefix}.fc2", F.gelu(_linear(sd, f"{prefix}.fc1", x)))


def _embed(sd: Mapping[str, Tensor], name: str, subject: str, x: Tensor) -> Tensor:
    return _mlp_forward(sd, f"{name}.mlp", F.gelu(_linear(sd, f"{name}.embed.{subject}.0", x)))


def _lora(sd: Mapping[str, Tensor], prefix: str, x: Tensor, scale: float) -> Tensor:
    low = F.linear(F.linear(x, sd[f"{prefix}.fc_lora.down.weight"]), sd[f"{prefix}.fc_lora.up.weight"])
    return _linear(sd, f"{prefix}.fc", x) + scale * low


def _vit(sd: Mapping[str, Tensor], name: str, x: Tensor, c: Tensor, taps: list[int], heads: int,
         lora_scale: float, adaln_scale: float) -> dict[int, tuple[Tensor, Tensor]]:
    """AdaLNLoRADiNOv2ViT.get_intermediate_layers: {block: (grid [B, C, h, w], class feature)}."""
    p = f"{name}.vision_model"
    patch = sd[f"{p}.patch_embed.proj.weight"]
    t = F.conv2d(x, patch, sd[f"{p}.patch_embed.proj.bias"], stride=patch.shape[-1]).flatten(2).transpose(1, 2)
    b, n_patches, width = t.shape
    t = torch.cat([sd[f"{p}.cls_token"].expand(b, -1, -1), t], dim=1) + sd[f"{p}.pos_embed"]
    depth = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith(f"{p}.blocks."))
    side = math.isqrt(n_patches)
    out = {}
    for i in range(depth):
        blk = f"{p}.blocks.{i}.block"
        mod = torch.tanh(F.linear(c, sd[f"{p}.blocks.{i}.adaLN.adaLN_modulation.0.weight"])) * adaln_scale
        shift1, scale1, gate1, shift2, scale2, gate2 = (m[:, None] for m in mod.chunk(6, dim=1))
        h = F.layer_norm(t, (width,), sd[f"{blk}.norm1.weight"], sd[f"{blk}.norm1.bias"], 1e-6) * (scale1 + 1) + shift1
        qkv = _lora(sd, f"{blk}.attn.qkv", h, lora_scale).reshape(b, -1, 3, heads, width // heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(b, -1, width)
        t = t + _lora(sd, f"{blk}.attn.proj", attn, lora_scale) * sd[f"{blk}.ls1.gamma"] * (gate1 + 1)
        h = F.layer_norm(t, (width,), sd[f"{blk}.norm2.weight"], sd[f"{blk}.norm2.bias"], 1e-6) * (scale2 + 1) + shift2
        h = _lora(sd, f"{blk}.mlp.fc2", F.gelu(_lora(sd, f"{blk}.mlp.fc1", h, lora_scale)), lora_scale)
        t = t + h * sd[f"{blk}.ls2.gamma"] * (gate2 + 1)
        if i in taps:
            grid = t[:, 1:].transpose(1, 2).reshape(b, width, side, side)
            pooled = torch.cat([grid.mean((2, 3)), grid.amax((2, 3))], dim=1)
            out[i] = (grid, t[:, 0] if i == depth - 1 else pooled)
    return out


def _conv_head(sd: Mapping[str, Tensor], prefix: str, x: Tensor, depth: int) -> Tensor:
    """SimpleConvBlocks: optional 1x1 reduction, residual conv + LayerNorm2d + SiLU blocks, conv + SiLU."""
    if f"{prefix}.reduce_block.weight" in sd:
        x = F.conv2d(x, sd[f"{prefix}.reduce_block.weight"])
    for j in range(depth - 1):
        y = F.conv2d(x, sd[f"{prefix}.block.{j}.0.weight"], padding="same")
        y = F.layer_norm(y.permute(0, 2, 3, 1), (y.shape[1],), sd[f"{prefix}.block.{j}.1.weight"],
                         sd[f"{prefix}.block.{j}.1.bias"], 1e-6).permute(0, 3, 1, 2)
        x = x + F.silu(y)
    return F.silu(F.conv2d(x, sd[f"{prefix}.block.{depth - 1}.0.weight"], padding="same"))


def _coords_mlp(sd: Mapping[str, Tensor], prefix: str, coords: Tensor) -> Tensor:
    """CachedCoordsMLP without its final activation: point_position_encoding(max_steps=100,
    features=32, periods=100) over the coordinates passed, then Linear/GELU at .mlp.1, .3, .5."""
    low, high = coords.min(0).values, coords.max(0).values
    positions = (coords - low) * (100 / (high - low).max())
    omega = torch.logspace(0, 1 / 32 - 1, 32, 100)
    angles = positions.unsqueeze(-1) * omega
    x = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-3)
    x = F.gelu(_linear(sd, f"{prefix}.mlp.1", x))
    x = F.gelu(_linear(sd, f"{prefix}.mlp.3", x))
    return _linear(sd, f"{prefix}.mlp.5", x)


def _time_embed(sd: Mapping[str, Tensor], subject: str, n: int) -> Tensor:
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    args = torch.arange(n, dtype=torch.float32)[:, None] * freqs[None]
    emb = _linear(sd, f"time_emb.subject_layers.{subject}", torch.cat([args.cos(), args.sin()], dim=-1))
    return _linear(sd, "time_emb.mlp.1", F.silu(emb))


def forward(state: Mapping[str, Tensor], config: MemConfig, subject: str, batch: Mapping[str, Tensor]) -> Tensor:
    """MemVoxelWiseEncodingModel.forward in eval mode: predictions [B, N] for every voxel of ``subject``."""
    sd = {k.removeprefix("model."): v for k, v in state.items()}
    m, coords = config.MODEL, state[f"coord_dict.{subject}"]
    heads = {"backbone": m.BACKBONE.KWARGS["num_heads"], "backbone_prev": m.BACKBONE_SMALL.KWARGS["num_heads"]}
    bhv, prev_bhvs = batch["bhv"], batch["prev_bhvs"]
    # T=0
    c = _embed(sd, "behav_embed", subject, bhv)
    taps = _vit(sd, "backbone", batch["img"], c, m.BACKBONE.LAYERS, heads["backbone"], m.BACKBONE.LORA.SCALE,
                m.BACKBONE.ADAPTIVE_LN.SCALE)
    grids = [_conv_head(sd, f"conv_blocks.blocks_dict.{layer}", taps[layer][0], m.CONV_HEAD.DEPTH)
             for layer in m.BACKBONE.LAYERS]
    x_cls = torch.stack([_mlp_forward(sd, f"cls_blocks.mlp_dict.{layer}", taps[layer][1])
                         for layer in m.BACKBONE.LAYERS], dim=-1)  # [B, D, L]
    # T=-1
    c = _embed(sd, "behav_embed_prev", subject, prev_bhvs[:, 0])
    small = m.BACKBONE_SMALL
    taps = _vit(sd, "backbone_prev", batch["prev_img"], c, small.LAYERS, heads["backbone_prev"], small.LORA.SCALE,
                small.ADAPTIVE_LN.SCALE)
    x_prev = torch.stack([_mlp_forward(sd, f"cls_blocks_prev.mlp_dict.{layer}", taps[layer][1])
                          for layer in small.LAYERS], dim=-1).mean(-1)
    # T=-2..
    b, frames = batch["prev_feats"].shape[:2]
    c = _embed(sd, "behav_embed_prev_feat", subject, prev_bhvs[:, 1:].reshape(b * frames, -1)).reshape(b, frames, -1)
    t = _time_embed(sd, subject, frames).expand(b, -1, -1)
    x_p = _mlp_forward(sd, "prev_feat_embed.mlp", torch.cat([batch["prev_feats"], c, t], dim=-1))
    x_p = _mlp_forward(sd, "prev_compress.merge_layer",
                       F.gelu(_linear(sd, f"prev_compress.subject_layer.{subject}.0", x_p.reshape(b, -1))))
    # voxels
    w_layer = torch.softmax(_coords_mlp(sd, f"layer_selector.{subject}", coords), dim=-1)  # [N, L]
    mu = torch.tanh(_coords_mlp(sd, f"retina_mapper.{subject}", coords)) * (1 - m.RETINA_MAPPER.SIGMA)
    x = torch.einsum("bdl,nl->bnd", x_cls, w_layer)
    for i, grid in enumerate(grids):
        sampled = F.grid_sample(grid, mu[None, :, None, :].expand(b, -1, -1, -1), mode="bilinear",
                                padding_mode="zeros", align_corners=False)  # [B, D, N, 1]
        x = x + sampled[..., 0].transpose(1, 2) * w_layer[:, i : i + 1]
    n = x.shape[1]
    shared = [x_prev, x_p, _embed(sd, "behav_pt", subject, bhv), _embed(sd, "behav_pt_prev", subject, prev_bhvs[:, 0])]
    h = torch.cat([x, *(s[:, None].expand(-1, n, -1) for s in shared)], dim=-1)
    return (h * sd[f"voxel_outs_weight.{subject}.weight"]).mean(-1) + sd[f"voxel_outs_weight.{subject}.bias"]
