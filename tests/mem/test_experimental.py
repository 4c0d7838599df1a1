"""The replay models of grids/replay.yaml: the ABLATION switches that leave one frame, with the
reference's EXPERIMENTAL.BACKBONE_NOGRAD; what trains, and the arithmetic that remains, recomputed
here in NumPy (the ablation switches alone: tests/mem/test_ablation.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from jobs.mem.config import load_config
from jobs.mem.layers.groups import SubjectGroups
from jobs.mem.model import MemModel

REPLAY = {
    "ABLATION.MEMORY_IMAGES": False,
    "ABLATION.RETINA_MAPPER": False,
    "ABLATION.LAYER_SELECTOR": False,
    "ABLATION.BEHAVIOUR": False,
    "ABLATION.BEHAVIOUR_PASSTHROUGH": False,
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


def test_the_frame_model_trains_its_class_heads_and_readout_only(build, tiny_overrides) -> None:
    trained = {".".join(name.split(".")[:2]) for name in _model(build, tiny_overrides, **REPLAY).trainable_state_dict()}
    assert trained == {"current.cls_heads", "readout.subj01", "readout.subj02"}
    unfrozen = _model(build, tiny_overrides, **{**REPLAY, "EXPERIMENTAL.BACKBONE_NOGRAD": False})
    assert any(name.startswith("current.backbone.") for name in unfrozen.trainable_state_dict())  # LoRA, AdaLN


def test_the_all_frames_model_trains_its_memory_but_no_vit(build, tiny_overrides, make_batch) -> None:
    """grids/replay.yaml's all_frames: the replay switches with the previous frames on."""
    switches = {**REPLAY, "ABLATION.MEMORY_IMAGES": True}
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
