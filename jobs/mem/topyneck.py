"""Job kind ``mem.topyneck``: pretrain the per-subject RetinaMapper and LayerSelector (mem-spec 3.4).

Param ``stage`` picks what a job does (``grids/topyneck.yaml`` runs both):

- ``train``: train a Mem model on ``DATASET.SUBJECTS`` (usually one subject) with one
  ``REGULARIZER.LAYER``, like ``mem.train``. Then evaluate its best checkpoint on val1 and val2
  and write, per subject, ``<parts_dir>/<subject>/layer-<REGULARIZER.LAYER>.pt``: that subject's
  topyneck tensors and its score, the mean of the val and test r.
- ``gather``: for every subject of ``DATASET.SUBJECTS`` take the part with the best score and
  write all of them as ONE topyneck file, ``output`` (``retina_mapper.<subject>.*`` and
  ``layer_selector.<subject>.*``): the ``MODEL.TOPYNECK_PATH`` of later runs.

The reference scored a greedy soup of each run; here the best single checkpoint is scored (soups
are made later, from the registered checkpoints).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from jobs.mem.files import save_atomically
from jobs.mem.fit import Fitted, build_trainer, finish, fit, job_config, write_result
from jobs.mem.model import TOPYNECK_GROUPS
from memq.context import JobContext
from memq.runner import PermanentError

STAGES = ("train", "gather")


def part_path(parts_dir: str | Path, subject: str, regularizer: float) -> Path:
    return Path(parts_dir) / subject / f"layer-{regularizer:g}.pt"


def _param(ctx: JobContext, name: str) -> Any:
    if name not in ctx.params:
        raise PermanentError(f"mem.topyneck: param `{name}` is missing")
    return ctx.params[name]


def run(ctx: JobContext) -> None:
    stage = _param(ctx, "stage")
    if stage not in STAGES:
        raise PermanentError(f"mem.topyneck: unknown stage {stage!r} (one of {', '.join(STAGES)})")
    if stage == "train":
        train(ctx)
    else:
        gather(ctx)


def _scores(ctx: JobContext, fitted: Fitted) -> dict[str, float]:
    """Validation and test metrics of the run's best checkpoint (loaded into ``fitted.lit``)."""
    best = fitted.topk.best
    if best is None or not Path(best["path"]).is_file():
        raise RuntimeError("the run left no checkpoint to take the topyneck from")
    fitted.lit.model.load_trainable_state_dict(torch.load(best["path"], map_location="cpu", weights_only=True))
    trainer = build_trainer(fitted.config, ctx, callbacks=[])
    val = trainer.validate(fitted.lit, datamodule=fitted.data, verbose=False)[0]
    test = trainer.test(fitted.lit, datamodule=fitted.data, verbose=False)[0]
    return {**val, **test}


def train(ctx: JobContext) -> None:
    config = job_config(ctx.params)
    if config.MODEL.TOPYNECK_PATH is not None:
        raise PermanentError("mem.topyneck stage train: MODEL.TOPYNECK_PATH must be unset (it trains the topyneck)")
    parts_dir = _param(ctx, "parts_dir")
    fitted = fit(ctx)
    scores = _scores(ctx, fitted)
    topyneck = fitted.lit.model.topyneck_state_dict()
    parts = {}
    for subject in fitted.lit.model.n_voxels:
        val, test = scores[f"VAL/PearsonCorrCoef/{subject}"], scores[f"TEST/PearsonCorrCoef/{subject}"]
        part = {
            "tensors": {k: v.cpu() for k, v in topyneck.items() if k.split(".")[1] == subject},
            "regularizer": config.REGULARIZER.LAYER,
            "val": val,
            "test": test,
            "score": (val + test) / 2,
        }
        path = save_atomically(part, part_path(parts_dir, subject, config.REGULARIZER.LAYER))
        parts[subject] = {"path": str(path), **{k: v for k, v in part.items() if k != "tensors"}}
    finish(ctx, fitted, topyneck_parts=parts)


def gather(ctx: JobContext) -> None:
    subjects = job_config(ctx.params).DATASET.SUBJECTS
    if subjects is None:
        raise PermanentError("mem.topyneck stage gather: DATASET.SUBJECTS must list the subjects to gather")
    parts_dir, output = Path(_param(ctx, "parts_dir")), Path(_param(ctx, "output"))
    state: dict[str, torch.Tensor] = {}
    chosen: dict[str, dict[str, Any]] = {}
    for subject in subjects:
        files = sorted((parts_dir / subject).glob("layer-*.pt"))
        if not files:
            raise PermanentError(f"mem.topyneck gather: no trained topyneck of subject {subject} in {parts_dir}")
        parts = {file: torch.load(file, map_location="cpu", weights_only=True) for file in files}
        file, best = max(parts.items(), key=lambda item: item[1]["score"])
        groups = {key.split(".")[0] for key in best["tensors"]}
        if groups != set(TOPYNECK_GROUPS):
            raise PermanentError(f"mem.topyneck gather: {file} lacks {sorted(set(TOPYNECK_GROUPS) - groups)}")
        state.update(best["tensors"])
        chosen[subject] = {"part": str(file), **{k: v for k, v in best.items() if k != "tensors"}}
    save_atomically(state, output)
    write_result(ctx, {"output": str(output), "subjects": chosen})
    ctx.record_metrics(topyneck_regularizers={s: c["regularizer"] for s, c in chosen.items()})
