"""The reference's EXPERIMENTAL switches in the model: what each leaves out, and the arithmetic of
what remains (the replay model of grids/replay.yaml), recomputed here in NumPy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from jobs.mem.config import load_config
from jobs.mem.layers.groups import SubjectGroups
from jobs.mem.model import MemModel

REPLAY = {
    "EXPERIMENTAL.USE_PREV_FRAME": False,
    "EXPERIMENTAL.USE_RETINA_MAPPER": False,
    "EXPERIMENTAL.USE_LAYER_SELECTOR": False,
    "EXPERIMENTAL.USE_BHV": False,
    "EXPERIMENTAL.USE_BHV_PASSTHROUGH": False,
    "EXPERIMENTAL.BACKBONE_NOGRAD": True,
}


def _model(build: Callable[..., MemModel], tiny_overrides: dict[str, Any], **switches: Any) -> MemModel:
    return build(load_config({**tiny_overrides, **switches}))


def test_the_replay_model_is_the_readout_of_the_mean_class_feature(build, tiny_overrides, make_batch) -> None:
    model = _model(build, tiny_overrides, **REPLAY).eval()
    config = load_config({**tiny_overrides, **REPLAY})
    batch = {k: v for k, v in make_batch(config, batch=3).items() if k in ("img", "bhv")}  # no other frame
    with torch.no_grad():
        pred = model(batch, "subj01").numpy()
        # the T=0 class features of the image alone: behaviour zeroed
        _, cls = model.current(batch["img"], torch.zeros_like(batch["bhv"]), SubjectGroups(("subj01",), (3,)))
        other = model(dict(batch, bhv=torch.randn_like(batch["bhv"])), "subj01").numpy()
    weight = model.readout["subj01"].weight.detach().numpy()
    bias = model.readout["subj01"].bias.detach().numpy()
    x = cls.mean(-1).numpy()  # [B, W]: the plain mean over the tapped layers
    width = x.shape[1]
    assert weight.shape[1] == config.MODEL.d_model > width  # the zero features still count in the mean
    expected = x @ weight[:, :width].T / weight.shape[1] + bias
    np.testing.assert_allclose(pred, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(other, pred)  # behaviour is not an input


def test_switched_off_parts_are_not_built_nor_trained(build, tiny_overrides) -> None:
    model = _model(build, tiny_overrides, **REPLAY)
    assert model.previous is None and model.memory is None and model.behav_pt is None and model.behav_pt_prev is None
    assert len(model.retina_mapper) == 0 and len(model.layer_selector) == 0 and len(model.current.conv_heads) == 0
    trained = {name.split(".")[0] + "." + name.split(".")[1] for name in model.trainable_state_dict()}
    assert trained == {"current.cls_heads", "readout.subj01", "readout.subj02"}
    full = _model(build, tiny_overrides)
    assert {"previous", "memory", "behav_pt", "behav_pt_prev", "retina_mapper", "layer_selector"} <= {
        name.split(".")[0] for name in full.trainable_state_dict()
    }


@pytest.mark.parametrize("switch", ["USE_BHV_PASSTHROUGH", "USE_LAYER_SELECTOR", "USE_RETINA_MAPPER"])
def test_each_switch_alone_removes_only_its_part(build, tiny_overrides, make_batch, switch: str) -> None:
    config = load_config(tiny_overrides)
    batch = make_batch(config, batch=2)
    off = _model(build, tiny_overrides, **{f"EXPERIMENTAL.{switch}": False}).eval()
    with torch.no_grad():
        pred = off(batch, "subj01")
    assert pred.shape == (2, 300) and torch.isfinite(pred).all()
    assert ("retina_mapper" in str(off.trainable_state_dict().keys())) == (switch != "USE_RETINA_MAPPER")
    assert ("layer_selector" in str(off.trainable_state_dict().keys())) == (switch != "USE_LAYER_SELECTOR")
    assert (off.behav_pt is None) == (switch == "USE_BHV_PASSTHROUGH") and off.previous is not None


def test_the_all_frames_model_trains_its_memory_but_no_vit(build, tiny_overrides, make_batch) -> None:
    """grids/replay.yaml's all_frames: the replay switches with the previous frames on."""
    switches = {**REPLAY, "EXPERIMENTAL.USE_PREV_FRAME": True}
    model = _model(build, tiny_overrides, **switches)
    trained = {name.split(".")[0] for name in model.trainable_state_dict()}
    assert trained == {"current", "previous", "memory", "behav_pt_prev", "readout"}
    assert not any(".backbone." in name or ".behav_embed." in name for name in model.trainable_state_dict()
                   if name.startswith(("current.", "previous.")))  # fmt: skip
    batch = make_batch(load_config({**tiny_overrides, **switches}), batch=2)
    with torch.no_grad():
        pred = model.eval()(batch, "subj01")
        moved = model(dict(batch, prev_feats=batch["prev_feats"] + 1), "subj01")
    assert pred.shape == (2, 300) and not torch.allclose(pred, moved)  # the memory frames reach the output
