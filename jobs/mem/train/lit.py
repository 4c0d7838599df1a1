"""The LightningModule that trains and evaluates a MemModel (mem-spec 3.1-3.3)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from timm.scheduler import CosineLRScheduler
from torch import Tensor

from jobs.mem.config import MemConfig
from jobs.mem.dark import dark_weights
from jobs.mem.model import MemModel
from jobs.mem.pearson import PearsonSums
from jobs.mem.train.loss_weights import SyncWeights

log = logging.getLogger(__name__)

VAL_METRIC = "VAL/PearsonCorrCoef/mean"  # voxel-weighted mean r: early stopping and checkpoint ranking

Batch = Mapping[str, Mapping[str, Tensor]]  # subject -> that subject's samples (collate_by_subject)


class MemLit(L.LightningModule):
    """Training step, per-voxel Pearson metrics, SYNC voxel weights, optimiser and schedule.

    ``roi_columns``: per subject, ROI name -> columns of that ROI in the subject's modelled
    voxels; each gets its own r (``VAL/PearsonCorrCoef/<subject>/<roi>``).

    Lightning checkpoints of this module hold only the model's trainable weights (plus the SYNC
    state): frozen weights are rebuilt from their files by the constructor.
    """

    def __init__(
        self,
        config: MemConfig,
        model: MemModel,
        roi_columns: Mapping[str, Mapping[str, Tensor]] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self.strict_loading = False  # see on_load_checkpoint: the trainable part is loaded strictly
        self.roi_columns = dict(roi_columns or {})
        self.pearson = {subject: PearsonSums(n) for subject, n in model.n_voxels.items()}
        self.sync = SyncWeights(config.LOSS.SYNC)

    # -- training ---------------------------------------------------------------------------------

    def _sample_voxels(self, subject: str, device: torch.device) -> Tensor | None:
        """A fresh random subset of MAX_TRAIN_VOXELS voxels; None (all) for smaller subjects."""
        n, keep = self.model.n_voxels[subject], self.config.MODEL.MAX_TRAIN_VOXELS
        return torch.randperm(n, device=device)[:keep] if n > keep else None

    def _voxel_weights(self, subject: str, voxels: Tensor | None, device: torch.device) -> Tensor | None:
        sync = self.config.LOSS.SYNC
        # the reference makes its first weights at the end of epoch SKIP_EPOCHS (SYNC_START)
        first_epoch = sync.SKIP_EPOCHS + (self.config.switch("SYNC_START") == "after_skip")
        if not sync.USE or self.current_epoch < first_epoch or self.global_step == 0:
            return None
        weights = self.sync.weight(subject, device)
        return weights if weights is None or voxels is None else weights[voxels]

    def _voxel_loss(self, subject: str, pred: Tensor, samples: Mapping[str, Tensor], selected: Tensor | None,
                    ) -> Tensor:
        """Per-voxel SmoothL1 of one subject's samples [B, n] on the ``selected`` voxels; with
        LOSS.DARK, blended with the loss against the teacher as the epoch says (jobs/mem/dark.py).
        The epoch means of both losses and of the blend are logged as TRAIN/dark/<subject>/..."""

        def loss(target: Tensor) -> Tensor:
            target = target if selected is None else target[:, selected]
            return F.smooth_l1_loss(pred, target, beta=self.config.LOSS.SMOOTH_L1_BETA, reduction="none")

        y = samples["y"]
        dark = self.config.LOSS.DARK
        if not dark.USE:
            return loss(y)
        teacher = samples["dark"]
        blank = (teacher == 0).all(dim=1)  # the reference's stand-in for a missing teacher file
        if bool(blank.any()):
            log.warning("%d teacher predictions are all 0: the target stands in for them", int(blank.sum()))
            teacher = torch.where(blank[:, None], y, teacher)
        target_weight, teacher_weight = dark_weights(self.current_epoch, dark.MAX_EPOCH)
        target_loss, teacher_loss = loss(y), loss(teacher)
        blend = target_loss * target_weight + teacher_loss * teacher_weight
        for name, value in (("target", target_loss), ("teacher", teacher_loss), ("blend", blend)):
            self.log(f"TRAIN/dark/{subject}/{name}", value.detach().mean(), on_step=False, on_epoch=True,
                     batch_size=len(y))
        return blend

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        device = next(iter(batch.values()))["y"].device
        voxels = {subject: self._sample_voxels(subject, device) for subject in batch}
        out = self.model.forward_subjects(batch, voxels)
        sums, count = [], 0
        for subject, samples in batch.items():
            selected = voxels[subject]
            voxel_loss = self._voxel_loss(subject, out.preds[subject].float(), samples, selected)
            weights = self._voxel_weights(subject, selected, device)
            if weights is not None:
                voxel_loss = voxel_loss * weights
            sums.append(voxel_loss.sum())
            count += voxel_loss.numel()
        # every (sample, voxel) pair weighs the same, whichever subject it belongs to
        loss = torch.stack(sums).sum() / count + self.config.REGULARIZER.LAYER * out.regularizer
        n_samples = sum(len(samples["y"]) for samples in batch.values())
        # a host sync, but skipping the step needs the answer here: torch.where(finite, loss, 0)
        # would still send NaN gradients back (0 * NaN) from a NaN target or prediction
        finite = bool(torch.isfinite(loss))
        if not finite:
            log.warning("non-finite training loss %s at step %d; counted as 0", loss.item(), self.global_step)
        self.log("TRAIN/loss", loss if finite else 0.0, batch_size=n_samples)
        # None: Lightning skips the backward and the optimizer step, GradScaler included (a zero
        # loss without gradients made GradScaler.step fail: "No inf checks were recorded")
        return loss if finite else None

    # -- evaluation -------------------------------------------------------------------------------

    def _evaluate(self, batch: Batch) -> None:
        for subject, pred in self.model.forward_subjects(batch).preds.items():
            self.pearson[subject].update(pred, batch[subject]["y"])

    def _reset(self) -> None:
        for sums in self.pearson.values():
            sums.reset()

    def _log_pearson(self, stage: str) -> dict[str, Tensor]:
        """Log mean r per subject, per ROI and over all voxels; return r per voxel per subject."""
        r = {subject: sums.compute() for subject, sums in self.pearson.items() if sums.count}
        for subject, values in r.items():
            self.log(f"{stage}/PearsonCorrCoef/{subject}", values.mean())
            for roi, columns in self.roi_columns.get(subject, {}).items():
                self.log(f"{stage}/PearsonCorrCoef/{subject}/{roi}", values[columns.to(values.device)].mean())
        self.log(f"{stage}/PearsonCorrCoef/mean", torch.cat(list(r.values())).mean())
        return r

    def on_validation_epoch_start(self) -> None:
        self._reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch)

    def on_validation_epoch_end(self) -> None:
        r = self._log_pearson("VAL")
        sanity_feeds = self.config.switch("SYNC_SANITY") == "feed"
        fitting = self.trainer.state.fn == TrainerFn.FITTING and (sanity_feeds or not self.trainer.sanity_checking)
        if fitting and self.config.LOSS.SYNC.USE:
            self.sync.update(r)

    def on_test_epoch_start(self) -> None:
        self._reset()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch)

    def on_test_epoch_end(self) -> None:
        self._log_pearson("TEST")

    # -- optimisation -----------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with weight decay on every trainable weight but the biases; linear warm-up from
        WARMUP_LR over WARMUP_EPOCHS, then a flat OPTIMIZER.LR (timm's cosine schedule with one
        one-epoch cycle whose minimum is the maximum)."""
        opt = self.config.OPTIMIZER
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (no_decay if name.endswith(".bias") else decay).append(param)
        groups = [{"params": decay, "weight_decay": opt.WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=opt.LR)
        scheduler = CosineLRScheduler(
            optimizer,
            t_initial=1,
            lr_min=opt.LR,
            warmup_t=opt.SCHEDULER.WARMUP_EPOCHS,
            warmup_lr_init=opt.SCHEDULER.WARMUP_LR,
            cycle_limit=1,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def lr_scheduler_step(self, scheduler: CosineLRScheduler, metric: Any) -> None:
        # called at the end of an epoch: set the rate of the next one (WARMUP_LAG one_epoch: the
        # reference's rate of the epoch just finished, a one-epoch lag)
        lag = self.config.switch("WARMUP_LAG") == "one_epoch"
        scheduler.step(epoch=self.current_epoch + (0 if lag else 1))

    # -- checkpoints ------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {f"model.{k}": v for k, v in self.model.trainable_state_dict().items()}
        checkpoint["sync"] = self.sync.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # strict on the trainable part, so a checkpoint of another model fails here; Lightning then
        # loads the same tensors again, non-strictly (the frozen weights are not in the file)
        state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
        self.model.load_trainable_state_dict(state)
        self.sync.load_state_dict(checkpoint["sync"])
