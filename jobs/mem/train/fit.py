"""One Mem training run inside a memq job: config from params, checks, data, model, Lightning.

Shared by the kinds ``mem.train`` and ``mem.topyneck`` (stage train). Failures that a retry
cannot fix (bad settings, missing data or weight files) raise PermanentError.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from jobs.mem.build import build, job_config
from jobs.mem.config import MemConfig
from jobs.mem.data import MemDataModule
from jobs.mem.train.lit import VAL_METRIC, MemLit
from jobs.mem.train.progress import JobProgress
from jobs.mem.train.randomness import ResumableRandomness
from jobs.mem.train.topk import RESUME_FILE, TopKCheckpoints
from memq.job import JobContext, write_atomically

RESULT_FILE = "result.json"


def build_trainer(
    config: MemConfig, ctx: JobContext, callbacks: list[Callback], loggers: list[Logger] | None = None
) -> L.Trainer:
    """A Trainer for this job's device: the config's mixed precision on a GPU, float32 on a CPU."""
    trainer = config.TRAINER
    gpu = bool(ctx.gpus)
    return L.Trainer(
        accelerator="gpu" if gpu else "cpu",
        devices=1,
        precision=trainer.PRECISION if gpu else "32-true",
        gradient_clip_val=trainer.GRADIENT_CLIP_VAL,
        accumulate_grad_batches=trainer.ACCUMULATE_GRAD_BATCHES,
        limit_train_batches=trainer.LIMIT_TRAIN_BATCHES,
        max_epochs=trainer.MAX_EPOCHS,
        callbacks=callbacks,
        logger=loggers or False,
        # our TopKCheckpoints, or none at all: never Lightning's default ModelCheckpoint
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks),
        enable_progress_bar=False,  # the job log is a file
        enable_model_summary=False,
        default_root_dir=ctx.job_dir,
    )


@dataclass
class Fitted:
    """A finished (or early-stopped) run and what evaluating or summarising it needs."""

    config: MemConfig
    data: MemDataModule
    lit: MemLit
    topk: TopKCheckpoints
    epochs: int  # epochs trained, earlier attempts included
    weights: dict[str, str]  # the frozen backbones' weights (Built.weights)


def fit(ctx: JobContext) -> Fitted:
    """Train, resuming from the resume file of an earlier attempt if there is one."""
    val_fraction = job_config(ctx.params).TRAINER.LIMIT_VAL_BATCHES
    built = build(ctx.params, ctx.repeat, ctx.gpus, ctx.root, val_fraction=val_fraction)
    # (a fixed subset of val1 is validated, not Lightning's first batches)
    config, data, model = built.config, built.data, built.model.train()
    lit = MemLit(config, model, data.roi_columns())
    topk = TopKCheckpoints(ctx, config.TRAINER.SAVE_TOP_K, VAL_METRIC, config.TRAINER.RESUME_EVERY_S)
    callbacks: list[Callback] = [
        ResumableRandomness(),  # first: sets the generators back before anything draws
        # checked where the resume file is written: at the end of each epoch, after its validation
        EarlyStopping(
            VAL_METRIC, mode="max", patience=config.TRAINER.EARLY_STOP_PATIENCE, check_on_train_epoch_end=True
        ),
        JobProgress(ctx, VAL_METRIC),
        topk,
    ]
    loggers: list[Logger] = [
        TensorBoardLogger(ctx.job_dir, name="logs", version="tensorboard"),
        CSVLogger(ctx.job_dir, name="logs", version="csv"),
    ]
    trainer = build_trainer(config, ctx, callbacks, loggers)
    trainer.fit(lit, datamodule=data, ckpt_path=ctx.resume_file(RESUME_FILE), weights_only=True)
    return Fitted(config, data, lit, topk, epochs=trainer.current_epoch, weights=built.weights)


def finish(ctx: JobContext, fitted: Fitted, **extra: Any) -> dict[str, Any]:
    """Record the final metrics and write ``result.json`` into the attempt's directory."""
    best = fitted.topk.best
    result = {
        "val_pearson": best["score"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "epochs": fitted.epochs,
        "checkpoints": fitted.topk.entries,
        "weights": fitted.weights,
        **extra,
    }
    ctx.record_metrics(val_pearson=result["val_pearson"], epochs=fitted.epochs)
    write_result(ctx, result)
    return result


def write_result(ctx: JobContext, result: Mapping[str, Any]) -> None:
    """``result.json`` in the attempt's directory: what the job produced, for people and scripts."""
    write_atomically(ctx.job_dir / RESULT_FILE, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
