"""Reference checkpoints (huzeyann/MemoryEncodingModel layout) converted into MemModel state.

The reference layout and forward pass come from tests/mem/reference_net.py, written from the
reference's code independently of the converter.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from jobs.mem.config import MemConfig, load_config
from jobs.mem.model import MemModel
from jobs.mem.reference.convert import ConversionError, ReferenceVoxels, convert
from jobs.mem.reference.read import read_reference
from jobs.mem.subject import SubjectInfo
from jobs.weights.install import install
from jobs.weights.manifest import read_manifest

from . import reference_net

N_VOXELS = {"subj01": 120, "subj02": 80}
NETS = {"backbone": "BACKBONE", "backbone_prev": "BACKBONE_SMALL"}


def plain_vits(root: Path, overrides: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """The frozen DINOv2 states the reference holds: the installed weights MODEL.*.WEIGHTS name."""
    installed = read_manifest(root)
    return {net: torch.load(installed[overrides[f"MODEL.{section}.WEIGHTS"]].path(root), weights_only=True)
            for net, section in NETS.items()}


@pytest.fixture
def coords() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {s: rng.uniform(-50, 50, size=(n, 3)).astype(np.float32) for s, n in N_VOXELS.items()}


def batch(config: MemConfig, size: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    px, frames = config.DATASET.IMAGE_SIZE, config.DATASET.N_PREV_FRAMES
    return {"img": torch.randn(size, 3, px, px, generator=g), "prev_img": torch.randn(size, 3, px, px, generator=g),
            "prev_feats": torch.randn(size, frames - 1, config.MODEL.PREV_FEAT.DIM, generator=g),
            "bhv": torch.randn(size, 35, generator=g), "prev_bhvs": torch.randn(size, frames, 35, generator=g)}


def reference_for(root: Path, config: MemConfig, overrides: dict[str, Any], coords: dict[str, np.ndarray],
                  seed: int = 0) -> dict[str, torch.Tensor]:
    as_tensors = {s: torch.from_numpy(c) for s, c in coords.items()}
    return reference_net.reference_state(config, as_tensors, plain_vits(root, overrides), seed)


def whole_brain(coords: dict[str, np.ndarray]) -> dict[str, ReferenceVoxels]:
    return {s: ReferenceVoxels(c) for s, c in coords.items()}


def model_for(root: Path, config: MemConfig, coords: dict[str, np.ndarray], seed: int = 7) -> MemModel:
    torch.manual_seed(seed)  # other trainable values than the reference's
    return MemModel(config, {s: SubjectInfo(c) for s, c in coords.items()}, weights_root=root).eval()


def test_a_converted_lightning_checkpoint_predicts_what_the_reference_network_predicts(
    tmp_path: Path, tiny_overrides: dict[str, Any], weights_root: Path, coords: dict[str, np.ndarray]
) -> None:
    config = load_config(tiny_overrides)
    state = reference_for(weights_root, config, tiny_overrides, coords)
    path = tmp_path / "epoch=000041.ckpt"
    hyper = {"cfg": argparse.Namespace(MODEL={"WIDTH_RATIO": 1.0}), "DATASET": {"ROIS": ["all"]}}
    torch.save({"state_dict": state, "epoch": 41, "pytorch-lightning_version": "1.9.4", "hyper_parameters": hyper,
                "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 41}}}}}, path)
    read = read_reference(path)
    assert read.ignored == ["argparse.Namespace"]  # read as an inert placeholder, never built
    model = model_for(weights_root, config, coords)
    converted = convert(read.tensors, model, whole_brain(coords))
    frozen = sum(1 for p in model.parameters() if not p.requires_grad)
    assert (converted.checked, converted.unchecked) == (frozen, 0)  # every frozen backbone tensor compared
    model.load_trainable_state_dict(converted.state)  # strict
    with torch.no_grad():
        for subject in coords:
            inputs = batch(config)
            expected = reference_net.forward(state, config, subject, inputs)
            assert expected.std() > 0.1
            torch.testing.assert_close(model(inputs, subject), expected, atol=2e-6, rtol=1e-5)


def test_every_converted_tensor_moves_the_prediction(tiny_overrides: dict[str, Any], weights_root: Path,
                                                     coords: dict[str, np.ndarray]) -> None:
    """So the test above fails whenever a reference tensor lands in the wrong place."""
    config = load_config(tiny_overrides)
    coords = {"subj01": coords["subj01"]}
    model = model_for(weights_root, config, coords)
    model.load_trainable_state_dict(convert(reference_for(weights_root, config, tiny_overrides, coords), model,
                                            whole_brain(coords)).state)
    for coordinate_mlps in (model.retina_mapper, model.layer_selector):
        coordinate_mlps.train()  # computed with gradients rather than read from their eval-mode cache
    g = torch.Generator().manual_seed(2)
    preds = model(batch(config), "subj01")
    (preds * torch.randn(preds.shape, generator=g)).sum().backward()
    trained = dict(model.named_parameters())
    assert [k for k in model.trainable_state_dict() if trained[k].grad is None or not trained[k].grad.any()] == []


def test_an_roi_run_takes_the_first_row_of_a_voxel_listed_twice(
    tiny_overrides: dict[str, Any], weights_root: Path, coords: dict[str, np.ndarray]
) -> None:
    config = load_config(tiny_overrides)
    full = coords["subj01"]
    # two ROI files sharing voxels, holding each axis' extremes so that the position encoding's
    # bounds are the subject's whatever bounds the model uses (PE_BOUNDS)
    extremes = np.unique(np.concatenate([full.argmin(0), full.argmax(0)]))
    roi_a, roi_b = np.concatenate([extremes, [10, 11, 12]]), np.array([12, 40, 10, 41])
    positions = np.concatenate([roi_a, roi_b])  # the reference's list: 12 and 10 twice
    union = np.array(list(dict.fromkeys(positions.tolist())))  # memq's: first occurrences
    state = reference_for(weights_root, config, tiny_overrides, {"subj01": full[positions]})
    torch.manual_seed(7)
    model = MemModel(config, {"subj01": SubjectInfo(full, voxels=union)}, weights_root=weights_root).eval()
    converted = convert(state, model, {"subj01": ReferenceVoxels(full, positions)})
    model.load_trainable_state_dict(converted.state)
    first = [int(np.flatnonzero(positions == v)[0]) for v in union]
    torch.testing.assert_close(converted.state["readout.subj01.weight"],
                               state["model.voxel_outs_weight.subj01.weight"][first])
    inputs = batch(config)
    with torch.no_grad():
        expected = reference_net.forward(state, config, "subj01", inputs)[:, first]
        torch.testing.assert_close(model(inputs, "subj01"), expected, atol=2e-6, rtol=1e-5)
    other = np.concatenate([roi_a, roi_b[::-1]])  # not the order the reference ran with
    with pytest.raises(ConversionError, match=r"subj01: the reference ran on other voxels.*DATASET\.ROIS"):
        convert(state, model, {"subj01": ReferenceVoxels(full, other)})


@pytest.mark.parametrize(("net", "setting"), [("backbone", "MODEL.BACKBONE.WEIGHTS"),
                                              ("backbone_prev", "MODEL.BACKBONE_SMALL.WEIGHTS")])
def test_frozen_backbone_weights_other_than_the_configured_ones_are_refused(
    tiny_overrides: dict[str, Any], weights_root: Path, coords: dict[str, np.ndarray], net: str, setting: str
) -> None:
    config = load_config(tiny_overrides)
    state = reference_for(weights_root, config, tiny_overrides, coords)
    state[f"model.{net}.vision_model.blocks.0.block.attn.qkv.fc.weight"] += 1e-3
    with pytest.raises(ConversionError, match=rf"{setting}: frozen weights differ .*blocks\.0\.block\.attn\.qkv\.base"):
        convert(state, model_for(weights_root, config, coords), whole_brain(coords))


def test_the_position_embedding_is_compared_as_memq_resamples_pretrained_weights(
    tmp_path: Path, tiny_overrides: dict[str, Any], weights_root: Path, coords: dict[str, np.ndarray]
) -> None:
    """DINOv2's file holds a 37x37 grid at 518 px; memq resamples it once for its image size."""
    vits = plain_vits(weights_root, tiny_overrides)
    width = vits["backbone"]["pos_embed"].shape[-1]
    vits["backbone"]["pos_embed"] = torch.randn(1, 1 + 6 * 6, width)  # 6x6 patches, the model has 4x4
    torch.save(vits["backbone"], tmp_path / "big.pth")
    model_name = load_config(tiny_overrides).MODEL.BACKBONE.NAME
    install(weights_root, "big_vitb", file=tmp_path / "big.pth", model=model_name)
    overrides = {**tiny_overrides, "MODEL.BACKBONE.WEIGHTS": "big_vitb"}
    config = load_config(overrides)
    model = model_for(weights_root, config, coords)
    assert model.current.backbone.vit.pos_embed.shape == (1, 17, width)
    state = reference_for(weights_root, config, overrides, coords)
    assert state["model.backbone.vision_model.pos_embed"].shape == (1, 37, width)
    assert convert(state, model, whole_brain(coords)).unchecked == 0
    state["model.backbone.vision_model.pos_embed"] = torch.randn(1, 37, width)
    with pytest.raises(ConversionError, match=r"MODEL\.BACKBONE\.WEIGHTS: .*pos_embed"):
        convert(state, model, whole_brain(coords))


def test_a_frozen_topyneck_is_compared_not_converted(
    tmp_path: Path, tiny_overrides: dict[str, Any], weights_root: Path, coords: dict[str, np.ndarray]
) -> None:
    config = load_config(tiny_overrides)
    state = reference_for(weights_root, config, tiny_overrides, coords)
    model = model_for(weights_root, config, coords)
    model.load_trainable_state_dict(convert(state, model, whole_brain(coords)).state)
    torch.save(model.topyneck_state_dict(), tmp_path / "topyneck.pth")  # the reference run's topyneck
    frozen = load_config({**tiny_overrides, "MODEL.TOPYNECK_PATH": str(tmp_path / "topyneck.pth")})
    converted = convert(state, model_for(weights_root, frozen, coords), whole_brain(coords))
    assert not any(k.startswith(("retina_mapper.", "layer_selector.")) for k in converted.state)
    state["model.layer_selector.subj02.mlp.5.bias"] += 0.1
    with pytest.raises(ConversionError, match=r"MODEL\.TOPYNECK_PATH: frozen weights differ .*layer_selector\.subj02"):
        convert(state, model_for(weights_root, frozen, coords), whole_brain(coords))


def test_a_bare_network_state_without_frozen_weights_converts_unchecked(
    tiny_overrides: dict[str, Any], weights_root: Path, coords: dict[str, np.ndarray]
) -> None:
    config = load_config(tiny_overrides)
    state = reference_for(weights_root, config, tiny_overrides, coords)
    full = convert(state, model_for(weights_root, config, coords), whole_brain(coords))
    bare = {k.removeprefix("model."): v for k, v in state.items()
            if k.startswith("model.") and (".vision_model." not in k or ".fc_lora." in k or ".adaLN." in k)}
    converted = convert(bare, model_for(weights_root, config, coords), whole_brain(coords))
    assert (converted.checked, converted.unchecked) == (0, full.checked)
    assert converted.state.keys() == full.state.keys()
    assert all(torch.equal(converted.state[k], full.state[k]) for k in full.state)


def test_tensors_that_do_not_fit_the_model_are_refused(tiny_overrides: dict[str, Any], weights_root: Path,
                                                       coords: dict[str, np.ndarray]) -> None:
    config = load_config(tiny_overrides)
    state = reference_for(weights_root, config, tiny_overrides, coords)
    one_subject = {"subj01": coords["subj01"]}
    with pytest.raises(ConversionError, match=r"modelled subjects the model does not: subj02 \(DATASET\.SUBJECTS"):
        convert(state, model_for(weights_root, config, one_subject), whole_brain(one_subject))
    bare = {k: v for k, v in state.items() if not k.startswith("coord_dict.")}
    with pytest.raises(ConversionError, match=r"no place for .*behav_embed\.embed\.subj02"):
        convert(bare, model_for(weights_root, config, one_subject), whole_brain(one_subject))
    with pytest.raises(ConversionError, match=r"not a tensor of the reference's PlVEModel: loss\.scale"):
        convert({**state, "loss.scale": torch.ones(1)}, model_for(weights_root, config, coords), whole_brain(coords))
    lacking = {k: v for k, v in state.items() if "time_emb.mlp" not in k}
    with pytest.raises(ConversionError, match=r"lacks 2 trained tensors of the model, first memory\.time_embed"):
        convert(lacking, model_for(weights_root, config, coords), whole_brain(coords))
    wider = load_config({**tiny_overrides, "MODEL.CONV_HEAD.WIDTH": 12})
    with pytest.raises(ConversionError, match=r"shapes differ"):
        convert(state, model_for(weights_root, wider, coords), whole_brain(coords))
    other_taps = load_config({**tiny_overrides, "MODEL.BACKBONE.LAYERS": [1, 2, 3]})
    with pytest.raises(ConversionError, match=r"taps block 0; MODEL\.BACKBONE\.LAYERS is \[1, 2, 3\]"):
        convert(state, model_for(weights_root, other_taps, coords), whole_brain(coords))


class Payload:
    """Pickles as a call that would leave a file behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_reading_runs_nothing_a_file_names(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.x": torch.ones(1)}, "hyper_parameters": {"x": Payload(marker)}}, path)
    with pytest.raises(ValueError, match=r"evil\.ckpt: not a torch checkpoint that can be read safely"):
        read_reference(path)
    assert not marker.exists()


def test_saved_state_dicts_are_read_and_other_contents_refused(tmp_path: Path) -> None:
    torch.save({"model.a": torch.ones(2)}, tmp_path / "soup.pth")
    read = read_reference(tmp_path / "soup.pth")
    assert read.ignored == [] and list(read.tensors) == ["model.a"]
    assert torch.equal(read.tensors["model.a"], torch.ones(2))
    torch.save({"state_dict": {"model.a": torch.ones(2), "model.b": 3}}, tmp_path / "odd.ckpt")
    with pytest.raises(ValueError, match=r"odd\.ckpt: state dict entries that are not tensors: model\.b"):
        read_reference(tmp_path / "odd.ckpt")
    with pytest.raises(ValueError, match=r"none\.ckpt: no such file"):
        read_reference(tmp_path / "none.ckpt")
    (tmp_path / "text.ckpt").write_text("not torch")
    with pytest.raises(ValueError, match=r"text\.ckpt: not a torch checkpoint"):
        read_reference(tmp_path / "text.ckpt")
