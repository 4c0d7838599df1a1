"""The reference implementation's checkpoints (huzeyann/MemoryEncodingModel) as MemModel state.

The reference's Lightning module (PlVEModel) keeps its network (MemVoxelWiseEncodingModel) under
``model.`` and each subject's voxel coordinates under ``coord_dict.<subject>``; its checkpoints
hold every tensor, frozen DINOv2 weights included. Names, reference (after ``model.``) -> memq:

    behav_embed / _prev / _prev_feat       current.behav_embed / previous.behav_embed / memory.behav_embed
    behav_pt, behav_pt_prev                behav_pt, behav_pt_prev
      .embed.<s>.0 / .mlp.fc1|fc2            .subject.<s>.0 / .shared.fc1|fc2
    backbone / backbone_prev .vision_model current.backbone.vit / previous.backbone.vit
      blocks.<i>.block.<lin>.fc              blocks.<i>.block.<lin>.base       (frozen)
      blocks.<i>.block.<lin>.fc_lora.down|up blocks.<i>.block.<lin>.down|up    (LoRA; lin = attn.qkv,
                                                                                attn.proj, mlp.fc1, mlp.fc2)
      blocks.<i>.adaLN.adaLN_modulation.0    blocks.<i>.modulation             (AdaLN-zero)
      blocks.<i>.block.norm*/ls*, cls_token, pos_embed, patch_embed, norm: same names (frozen);
      mask_token: unused by both
    conv_blocks.blocks_dict.<layer>        current.conv_heads.<tap>   (tap: position of block <layer>
      .reduce_block / .block.<j>              .reduce / .blocks.<j>, the last j: .out    in LAYERS)
    cls_blocks(_prev).mlp_dict.<layer>     current(previous).cls_heads.<tap>
    retina_mapper|layer_selector.<s>.mlp.<k>     <same>.<s>.net.<k-1>  (the reference's Sequential
                                                                       starts with its encoding)
    voxel_outs_weight.<s>.weight|bias      readout.<s>.weight|bias    (rows: see below)
    voxel_outs_weight.<s>.w_mlp.mlp.<k>, .b  readout.<s>.weight.net.<k-1>, readout.<s>.bias
    time_emb.subject_layers.<s> / .mlp.1   memory.time_embed.subject.<s> / .shared.1
    prev_feat_embed.mlp                    memory.frame_mlp
    prev_compress.subject_layer.<s> / .merge_layer   memory.compress.<s> / memory.merge

No tensor needs reshaping: both implementations use timm's qkv layout, [out, in] linear weights
and the same concatenation orders. Per-voxel rows do need selecting: the reference models the
concatenation of its ROI files, a voxel in two ROIs twice; memq models the union, first
occurrence kept (jobs/mem/data.py:roi_positions), so each memq voxel takes its first row.

Checks before anything is trusted: every reference tensor is placed or known to be unused, every
trainable tensor of the model is filled, shapes agree, ``coord_dict`` equals the coordinates of
the voxels memq models in the reference's order (same data, same ROIs), and the reference's
frozen tensors (backbones; a frozen topyneck) equal the model's, its DINOv2 position embedding
resampled as memq resamples pretrained weights (timm's filter): a converted checkpoint only
predicts what the reference predicted on the backbone it was trained with.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import Tensor

from jobs.mem.model import MemModel

_EMBEDDERS = {
    "behav_embed": "current.behav_embed",
    "behav_embed_prev": "previous.behav_embed",
    "behav_embed_prev_feat": "memory.behav_embed",
    "behav_pt": "behav_pt",
    "behav_pt_prev": "behav_pt_prev",
}
_BACKBONES = {"backbone": "current", "backbone_prev": "previous"}
_CLS_HEADS = {"cls_blocks": "current", "cls_blocks_prev": "previous"}
_UNUSED = re.compile(r"(backbone|backbone_prev)\.vision_model\.mask_token")
# the setting that supplies each group of frozen tensors, for the message when they differ
_FROZEN_SOURCES = {
    "current.backbone.": "MODEL.BACKBONE.WEIGHTS",
    "previous.backbone.": "MODEL.BACKBONE_SMALL.WEIGHTS",
    "retina_mapper.": "MODEL.TOPYNECK_PATH",
    "layer_selector.": "MODEL.TOPYNECK_PATH",
}
_PER_VOXEL = re.compile(r"readout\.(\w+)\.(weight|bias)", re.ASCII)


class ConversionError(ValueError):
    """The reference checkpoint does not fit the model; the message says what and which setting."""


@dataclass(frozen=True)
class ReferenceVoxels:
    """One subject as the reference run saw it.

    ``coords`` [N_s, 3]: all the subject's voxels; ``positions``: the reference's voxel list, its
    ROI files concatenated in DATASET.ROIS order (repeats kept); None for the whole brain.
    """

    coords: np.ndarray
    positions: np.ndarray | None = None

    def rows(self) -> np.ndarray:
        """Rows of the reference's per-voxel tensors for memq's voxels (first occurrences; ROIs only)."""
        assert self.positions is not None
        _, first = np.unique(self.positions, return_index=True)
        return np.sort(first)

    def reference_coords(self) -> np.ndarray:
        return self.coords if self.positions is None else self.coords[self.positions]


@dataclass(frozen=True)
class _Layout:
    """What the reference's names encode by value: tapped block numbers, conv-head depth."""

    layers: tuple[int, ...]
    small_layers: tuple[int, ...]
    conv_depth: int

    @classmethod
    def of(cls, model: MemModel) -> _Layout:
        current = model.current
        return cls(tuple(current.backbone.layers), tuple(model.previous.backbone.layers),
                   len(current.conv_heads[0].blocks) + 1)

    def tap(self, layer: str, small: bool = False) -> int:
        layers = self.small_layers if small else self.layers
        if int(layer) not in layers:
            setting = "MODEL.BACKBONE_SMALL.LAYERS" if small else "MODEL.BACKBONE.LAYERS"
            raise ConversionError(f"the reference taps block {layer}; {setting} is {list(layers)}")
        return layers.index(int(layer))

    def conv_block(self, j: str) -> str:
        return "out" if int(j) == self.conv_depth - 1 else f"blocks.{j}"


_Rule = tuple[re.Pattern[str], Callable[[re.Match[str], _Layout], str]]


def _rule(pattern: str, rename: Callable[[re.Match[str], _Layout], str]) -> _Rule:
    return re.compile(pattern, re.ASCII), rename


_EMB = "|".join(_EMBEDDERS)
_VIT = r"(backbone|backbone_prev)\.vision_model"
_LIN = r"(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
_P = r"(weight|bias)"
_RULES: tuple[_Rule, ...] = (
    _rule(rf"({_EMB})\.embed\.(\w+)\.0\.{_P}", lambda m, _: f"{_EMBEDDERS[m[1]]}.subject.{m[2]}.0.{m[3]}"),
    _rule(rf"({_EMB})\.mlp\.(fc[12])\.{_P}", lambda m, _: f"{_EMBEDDERS[m[1]]}.shared.{m[2]}.{m[3]}"),
    _rule(rf"{_VIT}\.blocks\.(\d+)\.block\.{_LIN}\.fc_lora\.(down|up)\.weight",
          lambda m, _: f"{_BACKBONES[m[1]]}.backbone.vit.blocks.{m[2]}.block.{m[3]}.{m[4]}.weight"),
    _rule(rf"{_VIT}\.blocks\.(\d+)\.block\.{_LIN}\.fc\.{_P}",
          lambda m, _: f"{_BACKBONES[m[1]]}.backbone.vit.blocks.{m[2]}.block.{m[3]}.base.{m[4]}"),
    _rule(rf"{_VIT}\.blocks\.(\d+)\.adaLN\.adaLN_modulation\.0\.weight",
          lambda m, _: f"{_BACKBONES[m[1]]}.backbone.vit.blocks.{m[2]}.modulation.weight"),
    _rule(rf"{_VIT}\.blocks\.(\d+)\.block\.((?:norm[12]\.{_P})|(?:ls[12]\.gamma))",
          lambda m, _: f"{_BACKBONES[m[1]]}.backbone.vit.blocks.{m[2]}.block.{m[3]}"),
    _rule(rf"{_VIT}\.(cls_token|pos_embed|patch_embed\.proj\.{_P}|norm\.{_P})",
          lambda m, _: f"{_BACKBONES[m[1]]}.backbone.vit.{m[2]}"),
    _rule(r"conv_blocks\.blocks_dict\.(\d+)\.reduce_block\.weight",
          lambda m, lay: f"current.conv_heads.{lay.tap(m[1])}.reduce.weight"),
    _rule(rf"conv_blocks\.blocks_dict\.(\d+)\.block\.(\d+)\.(\d+)\.{_P}",
          lambda m, lay: f"current.conv_heads.{lay.tap(m[1])}.{lay.conv_block(m[2])}.{m[3]}.{m[4]}"),
    _rule(rf"(cls_blocks|cls_blocks_prev)\.mlp_dict\.(\d+)\.(fc[12])\.{_P}",
          lambda m, lay: f"{_CLS_HEADS[m[1]]}.cls_heads.{lay.tap(m[2], m[1] == 'cls_blocks_prev')}.{m[3]}.{m[4]}"),
    _rule(rf"(retina_mapper|layer_selector)\.(\w+)\.mlp\.(\d+)\.{_P}",
          lambda m, _: f"{m[1]}.{m[2]}.net.{int(m[3]) - 1}.{m[4]}"),
    _rule(rf"voxel_outs_weight\.(\w+)\.{_P}", lambda m, _: f"readout.{m[1]}.{m[2]}"),
    _rule(rf"voxel_outs_weight\.(\w+)\.w_mlp\.mlp\.(\d+)\.{_P}",
          lambda m, _: f"readout.{m[1]}.weight.net.{int(m[2]) - 1}.{m[3]}"),
    _rule(r"voxel_outs_weight\.(\w+)\.b", lambda m, _: f"readout.{m[1]}.bias"),
    _rule(rf"time_emb\.subject_layers\.(\w+)\.{_P}", lambda m, _: f"memory.time_embed.subject.{m[1]}.{m[2]}"),
    _rule(rf"time_emb\.mlp\.1\.{_P}", lambda m, _: f"memory.time_embed.shared.1.{m[1]}"),
    _rule(rf"prev_feat_embed\.mlp\.(fc[12])\.{_P}", lambda m, _: f"memory.frame_mlp.{m[1]}.{m[2]}"),
    _rule(rf"prev_compress\.subject_layer\.(\w+)\.0\.{_P}", lambda m, _: f"memory.compress.{m[1]}.0.{m[2]}"),
    _rule(rf"prev_compress\.merge_layer\.(fc[12])\.{_P}", lambda m, _: f"memory.merge.{m[1]}.{m[2]}"),
)


def memq_name(name: str, layout: _Layout) -> str | None:
    """The MemModel parameter a reference network tensor (name without ``model.``) maps to, or None."""
    for pattern, rename in _RULES:
        match = pattern.fullmatch(name)
        if match:
            return rename(match, layout)
    return None


class Converted(NamedTuple):
    state: dict[str, Tensor]  # the model's trainable state: what a memq checkpoint holds
    checked: int  # frozen tensors of the model found equal to the reference's
    unchecked: int  # frozen tensors of the model that the reference file does not hold


def _split(reference: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(network tensors without ``model.``, coord_dict by subject) of a PlVEModel or bare network state."""
    if not any(k.startswith("model.") for k in reference):
        return dict(reference), {}
    network, coords, other = {}, {}, []
    for key, value in reference.items():
        if key.startswith("model."):
            network[key.removeprefix("model.")] = value
        elif key.startswith("coord_dict."):
            coords[key.removeprefix("coord_dict.")] = value
        else:
            other.append(key)
    if other:
        raise ConversionError(f"not a tensor of the reference's PlVEModel: {', '.join(sorted(other)[:5])}")
    return network, coords


def _check_coords(coords: Mapping[str, Tensor], voxels: Mapping[str, ReferenceVoxels]) -> None:
    extra = sorted(coords.keys() - voxels.keys())
    if extra:
        raise ConversionError(f"the reference run modelled subjects the model does not: {', '.join(extra)} "
                              f"(DATASET.SUBJECTS must be the run's)")
    for subject, value in coords.items():
        expected = torch.as_tensor(voxels[subject].reference_coords(), dtype=value.dtype)
        if value.shape != expected.shape:
            found = f"{len(value)} voxels, memq's data and ROIs give {len(expected)}"
        elif not torch.allclose(value, expected, rtol=1e-6, atol=1e-5):
            found = f"coordinates up to {(value - expected).abs().max():.3g} apart"
        else:
            continue
        raise ConversionError(f"{subject}: the reference ran on other voxels ({found}): DATASET.DIR and "
                              f"DATASET.ROIS must be the run's, its coordinates those the reference prepared")


def _frozen_source(key: str) -> str:
    return next((s for prefix, s in _FROZEN_SOURCES.items() if key.startswith(prefix)), "the model's settings")


def _as_memq(key: str, value: Tensor, model: MemModel, voxels: Mapping[str, ReferenceVoxels]) -> Tensor:
    """The reference tensor as the model holds it: memq's voxel rows, the resampled position embedding."""
    per_voxel = _PER_VOXEL.fullmatch(key)
    subject = voxels.get(per_voxel[1]) if per_voxel else None
    if subject is not None and subject.positions is not None and len(value) == len(subject.positions):
        return value[torch.as_tensor(subject.rows())]
    if key.endswith("backbone.vit.pos_embed"):
        vit = model.get_submodule(key.removesuffix(".pos_embed"))
        return checkpoint_filter_fn({"pos_embed": value}, vit)["pos_embed"]
    return value


def convert(reference: Mapping[str, Tensor], model: MemModel, voxels: Mapping[str, ReferenceVoxels]) -> Converted:
    """The trainable state of ``model`` from a reference checkpoint's state dict, checked (module doc).

    ``voxels``: every subject of the model as the reference run saw it. ConversionError otherwise.
    """
    network, coords = _split(reference)
    _check_coords(coords, voxels)
    layout = _Layout.of(model)
    ours = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    trainable = model.trainable_state_dict().keys()
    state: dict[str, Tensor] = {}
    unknown, shapes, differ = [], [], []
    checked = 0
    for name, value in network.items():
        key = memq_name(name, layout)
        if key is None or key not in ours:
            if not _UNUSED.fullmatch(name):
                unknown.append(name)
            continue
        value = _as_memq(key, value.detach().cpu(), model, voxels)
        if value.shape != ours[key].shape:
            shapes.append(f"{name} {tuple(value.shape)} -> {key} {tuple(ours[key].shape)}")
        elif key in trainable:
            state[key] = value.to(ours[key].dtype)
        elif torch.allclose(value.to(ours[key].dtype), ours[key], rtol=1e-5, atol=1e-6):
            checked += 1
        else:
            differ.append(f"{key} (up to {(value - ours[key]).abs().max():.3g} apart)")
    if unknown:
        raise ConversionError(f"reference tensors memq has no place for (other subjects or settings?): "
                              f"{', '.join(sorted(unknown)[:5])}{' ...' if len(unknown) > 5 else ''}")
    if shapes:
        raise ConversionError(f"shapes differ, the model's settings are not the reference run's: "
                              f"{'; '.join(shapes[:3])}")
    if differ:
        raise ConversionError(f"{_frozen_source(differ[0])}: frozen weights differ from the reference run's "
                              f"({len(differ)} tensors, first {differ[0]}); use the weights the reference ran with")
    missing = sorted(trainable - state.keys())
    if missing:
        raise ConversionError(f"the reference checkpoint lacks {len(missing)} trained tensors of the model, "
                              f"first {missing[0]} (a subject or a part the run did not have?)")
    return Converted(state, checked, len(ours) - len(trainable) - checked)
