"""The pieces of Mem training: streaming Pearson r, SYNC weights, loss, voxel sampling, optimiser."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader

from jobs.mem.config import MemConfig, SyncConfig, load_config
from jobs.mem.model import MemModel
from jobs.mem.pearson import PearsonSums
from jobs.mem.train.lit import MemLit
from jobs.mem.train.loss_weights import SyncWeights

Build = Callable[..., MemModel]
MakeBatch = Callable[..., dict[str, torch.Tensor]]


def test_pearson_over_batches_is_exact() -> None:
    rng = np.random.default_rng(0)
    preds, target = rng.standard_normal((50, 7)), rng.standard_normal((50, 7))
    preds[:, 3] += 3 * target[:, 3]  # one well-predicted voxel
    preds[:, 5] = 2.0  # a constant prediction: r undefined -> 0
    sums = PearsonSums(7)
    assert torch.equal(sums.compute(), torch.zeros(7))
    for rows in np.array_split(np.arange(50), [1, 17, 30]):  # uneven batches, one of a single sample
        sums.update(torch.tensor(preds[rows], dtype=torch.float32), torch.tensor(target[rows], dtype=torch.float32))
    expected = [np.corrcoef(preds[:, v], target[:, v])[0, 1] if v != 5 else 0.0 for v in range(7)]
    np.testing.assert_allclose(sums.compute().numpy(), expected, atol=1e-6)
    assert sums.count == 50
    sums.reset()
    assert sums.count == 0 and torch.equal(sums.compute(), torch.zeros(7))


def test_sync_ema_and_joint_min_max() -> None:
    sync = SyncWeights(SyncConfig(EMA_BETA=0.9))
    assert sync.weight("a", torch.device("cpu")) is None
    r1 = {"a": torch.tensor([0.1, 0.2, 0.3]), "b": torch.tensor([0.0, 0.1])}
    r2 = {"a": torch.tensor([0.3, 0.2, 0.3]), "b": torch.tensor([0.1, 0.0])}
    sync.update(r1)
    sync.update(r2)
    grad = {s: 0.9 * 0.1 * r1[s] + 0.1 * (r2[s] - r1[s]) for s in r1}  # v_prev starts at 0
    for s in r1:
        torch.testing.assert_close(sync.running_grad[s], grad[s])
    joint = torch.cat([grad["a"], grad["b"]])
    for s in r1:  # min-max over both subjects' voxels together, not per subject
        torch.testing.assert_close(sync.weight(s, torch.device("cpu")), (grad[s] - joint.min()) / np.ptp(joint.numpy()))
    assert sync.weights["b"].min() == 0 and sync.weights["a"].max() == 1  # extremes in different subjects

    restored = SyncWeights(SyncConfig(EMA_BETA=0.9))
    restored.load_state_dict(sync.state_dict())
    for s in r1:
        torch.testing.assert_close(restored.weight(s, torch.device("cpu")), sync.weights[s])


@pytest.mark.parametrize("rule", ["exp", "square", "log", "norm"])
def test_sync_rules_keep_the_weights_in_unit_range(rule: str) -> None:
    sync = SyncWeights(SyncConfig(UPDATE_RULE=rule))
    sync.update({"a": torch.linspace(-0.2, 0.6, 20), "b": torch.linspace(0, 0.3, 7)})
    weights = torch.cat(list(sync.weights.values()))
    assert weights.min() == 0 and weights.max() == 1


def _with_targets(config: MemConfig, batch: dict[str, torch.Tensor], n: int, fill: float | None = None) -> dict:
    y = torch.randn(len(batch["img"]), n) if fill is None else torch.full((len(batch["img"]), n), fill)
    return {**batch, "y": y}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_nan_loss_skips_the_step_with_a_warning(
    build: Build, make_batch: MakeBatch, tiny_config: MemConfig, caplog: pytest.LogCaptureFixture
) -> None:
    lit = MemLit(tiny_config, build().train())
    batch = {"subj01": _with_targets(tiny_config, make_batch(tiny_config), 300, fill=float("nan"))}
    with caplog.at_level(logging.WARNING, logger="jobs.mem.train.lit"):
        assert lit.training_step(batch, 0) is None  # Lightning then skips backward and optimizer step
    assert "non-finite training loss" in caplog.text

    mixed = {
        "subj01": _with_targets(tiny_config, make_batch(tiny_config), 300),
        "subj02": _with_targets(tiny_config, make_batch(tiny_config, batch=3, seed=1), 7),
    }
    finite = lit.training_step(mixed, 0)
    assert finite is not None and torch.isfinite(finite) and finite.item() > 0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_nan_step_under_a_grad_scaler_changes_no_weight(
    build: Build, make_batch: MakeBatch, tiny_config: MemConfig, tmp_path: Path
) -> None:
    """fp16 training (GradScaler) skips the step; it used to fail in GradScaler.step."""
    model = build().train()
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    batch = {"subj01": _with_targets(tiny_config, make_batch(tiny_config), 300, fill=float("nan"))}
    trainer = L.Trainer(
        accelerator="cpu",
        plugins=[MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))],
        gradient_clip_val=0.5,
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(MemLit(tiny_config, model), train_dataloaders=DataLoader([batch], batch_size=None))
    for name, value in model.trainable_state_dict().items():
        assert torch.equal(value, before[name]), name


def test_training_voxels_are_a_fresh_sample_per_step(build: Build, tiny_config: MemConfig) -> None:
    lit = MemLit(tiny_config, build())  # MAX_TRAIN_VOXELS 100: subj01 has 300, subj02 7 (an ROI)
    first, second = lit._sample_voxels("subj01", torch.device("cpu")), lit._sample_voxels("subj01", torch.device("cpu"))
    assert first is not None and second is not None
    assert len(first) == len(set(first.tolist())) == 100 and first.max() < 300
    assert not torch.equal(first, second)
    assert lit._sample_voxels("subj02", torch.device("cpu")) is None  # fewer voxels than the cap: all


def test_optimizer_decays_all_but_biases_and_warms_up_linearly(build: Build, tiny_overrides: dict) -> None:
    config = load_config(
        {**tiny_overrides, "OPTIMIZER.LR": 1e-3, "OPTIMIZER.SCHEDULER.WARMUP_EPOCHS": 4, "OPTIMIZER.WEIGHT_DECAY": 0.1}
    )
    model = build(config)
    setup = MemLit(config, model).configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    assert setup["lr_scheduler"]["interval"] == "epoch"
    decay, no_decay = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {names[id(p)] for p in no_decay["params"]} == {n for n in trainable if n.endswith(".bias")}
    assert {names[id(p)] for p in decay["params"]} == {n for n in trainable if not n.endswith(".bias")}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)

    rates = []
    for epoch in range(8):
        scheduler.step(epoch=epoch)
        rates.append(optimizer.param_groups[0]["lr"])
    warmup = [1e-6 + (1e-3 - 1e-6) * e / 4 for e in range(4)]
    np.testing.assert_allclose(rates, [*warmup, 1e-3, 1e-3, 1e-3, 1e-3], rtol=1e-9)
