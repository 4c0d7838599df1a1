"""Top-k checkpoints of a training job, registered with memq, and the job's resume file.

At the end of each training epoch (after its validation, as Lightning's own checkpoints do, so
that a resumed run starts with the next epoch):

1. if the epoch's score enters the top k, its trainable weights are saved (node-local scratch);
2. the resume file ``last.ckpt`` is written to the attempt's shared directory: trainable weights,
   optimiser, schedule, loop and callback state, including this bookkeeping;
3. the new checkpoint is registered, and the ones that dropped out are unregistered and deleted.

Step 3 comes after step 2 so that a crash in between is repaired on resume: the resume file
lists the new checkpoint (registered then, if its file is there) and the dropped ones (then
deleted). A resumed attempt re-registers the listed checkpoints whose files it can see under its
own attempt and forgets the others (e.g. when it runs on another node).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from jobs.mem.files import save_atomically
from memq.job import JobContext, write_atomically

RESUME_FILE = "last.ckpt"


class TopKCheckpoints(Checkpoint):
    """Keeps the ``k`` best checkpoints by ``monitor`` (higher is better); files hold
    ``model.trainable_state_dict()`` of the LightningModule's ``model``.

    ``entries``: dicts ``{"path", "score", "epoch"}``, best first. Lightning runs Checkpoint
    callbacks after the others, so the resume file sees their state of this epoch.
    """

    def __init__(self, ctx: JobContext, k: int, monitor: str, resume_every_s: float = 0.0) -> None:
        self.ctx, self.k, self.monitor = ctx, k, monitor
        self.resume_every_s = resume_every_s
        self.directory = ctx.scratch_dir / "checkpoints"
        self.entries: list[dict[str, Any]] = []
        self.dropped: list[str] = []
        self._resume_written = float("-inf")

    @property
    def best(self) -> dict[str, Any] | None:
        return self.entries[0] if self.entries else None

    def _drop(self, path: str) -> None:
        self.ctx.unregister_checkpoint(path)
        Path(path).unlink(missing_ok=True)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Adopt what a resume file listed (nothing on a fresh start)."""
        for path in self.dropped:
            self._drop(path)
        self.dropped = []
        present = []
        for entry in self.entries:
            if Path(entry["path"]).is_file():
                self.ctx.register_checkpoint(entry["path"], metric=entry["score"], step=entry["epoch"])
                present.append(entry)
            else:
                self.ctx.unregister_checkpoint(entry["path"])
        self.entries = present
        # The resume file may predate the last epochs (it is written at most every resume_every_s):
        # checkpoints registered since then and not in its list are not part of this run's top k.
        listed = {entry["path"] for entry in present}
        for row in self.ctx.checkpoints():
            if row["path"] not in listed:
                self._drop(row["path"])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        score, epoch = float(trainer.callback_metrics[self.monitor]), trainer.current_epoch
        new = None
        if len(self.entries) < self.k or score > self.entries[-1]["score"]:
            new = {"path": str(self.directory / f"epoch-{epoch:04d}.pt"), "score": score, "epoch": epoch}
            weights = {k: v.cpu() for k, v in pl_module.model.trainable_state_dict().items()}  # loads anywhere
            save_atomically(weights, new["path"])
            ranked = sorted([*self.entries, new], key=lambda e: e["score"], reverse=True)
            self.entries, self.dropped = ranked[: self.k], [e["path"] for e in ranked[self.k :]]
        now = time.monotonic()
        if now - self._resume_written >= self.resume_every_s or epoch + 1 >= (trainer.max_epochs or 0):
            write_atomically(self.ctx.job_dir / RESUME_FILE,
                             lambda tmp: trainer.save_checkpoint(tmp, weights_only=False))
            self._resume_written = now
        if new is not None:
            self.ctx.register_checkpoint(new["path"], metric=score, step=epoch)
        for path in self.dropped:
            self._drop(path)
        self.dropped = []

    def state_dict(self) -> dict[str, Any]:
        return {"entries": self.entries, "dropped": self.dropped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.entries, self.dropped = list(state_dict["entries"]), list(state_dict["dropped"])
