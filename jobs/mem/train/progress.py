"""Reports a training job's epochs and best score to memq (dashboard progress, job metrics)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from memq.job import JobContext


class JobProgress(Callback):
    """After every epoch (and its validation): progress ``epoch``, ``best``, ``val``, and the job metric
    ``val_pearson`` (best validation r so far, earlier attempts included) when it improves."""

    def __init__(self, ctx: JobContext, monitor: str) -> None:
        self.ctx, self.monitor = ctx, monitor
        self.best: float | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        val = float(trainer.callback_metrics[self.monitor])
        if self.best is None or val > self.best:
            self.best = val
            self.ctx.record_metrics(val_pearson=val)
        # one write per epoch (epochs take minutes), never dropped by the rate limit
        self.ctx.report_progress(force=True, epoch=trainer.current_epoch, best=self.best, val=val)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict["best"]
