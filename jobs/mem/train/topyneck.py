"""Job kind ``mem.topyneck``: pretrain the per-subject RetinaMapper and LayerSelector (mem-spec 3.4).

Param ``stage`` picks what a job does (``grids/topyneck.yaml`` runs both):

- ``train``: train a Mem model on ``DATASET.SUBJECTS`` (usually one subject) with one
  ``REGULARIZER.LAYER``, like ``mem.train``. Then make the greedy soup of its registered top-k
  checkpoints (as the reference's xvaa runs do after fitting), evaluate the soup on val1 and val2
  over the whole splits, and write, per subject, ``<parts_dir>/<subject>/layer-<REGULARIZER.LAYER>.pt``:
  that subject's topyneck tensors OF THE SOUP and its score, the mean of the soup's val and test r.
- ``gather``: for every subject of ``DATASET.SUBJECTS`` take the part with the best score and
  write all of them as ONE topyneck file, ``output`` (``retina_mapper.<subject>.*`` and
  ``layer_selector.<subject>.*``): the ``MODEL.TOPYNECK_PATH`` of later runs.

As in the reference (xvab), the topyneck is taken from each run's soup, not from its best single
checkpoint: the frozen map that 111 later models share is an average over the run's best epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from jobs.mem.evaluate import pearson_by_subject
from jobs.mem.files import save_atomically
from jobs.mem.model import TOPYNECK_GROUPS
from jobs.mem.train.fit import finish, fit, job_config, write_result
from jobs.mem.train.own_soup import own_soup
from memq.job import JobContext, PermanentError

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


def train(ctx: JobContext) -> None:
    config = job_config(ctx.params)
    if config.MODEL.TOPYNECK_PATH is not None:
        raise PermanentError("mem.topyneck stage train: MODEL.TOPYNECK_PATH must be unset (it trains the topyneck)")
    parts_dir = _param(ctx, "parts_dir")
    fitted = fit(ctx)
    built, soup = own_soup(ctx)
    val, test = pearson_by_subject(built, "val1"), pearson_by_subject(built, "val2")
    topyneck = built.model.topyneck_state_dict()
    parts = {}
    for subject in built.model.n_voxels:
        part = {
            "tensors": {k: v.cpu() for k, v in topyneck.items() if k.split(".")[1] == subject},
            "regularizer": config.REGULARIZER.LAYER,
            "val": float(val[subject].mean()),
            "test": float(test[subject].mean()),
        }
        part["score"] = (part["val"] + part["test"]) / 2
        path = save_atomically(part, part_path(parts_dir, subject, config.REGULARIZER.LAYER))
        parts[subject] = {"path": str(path), **{k: v for k, v in part.items() if k != "tensors"}}
    finish(ctx, fitted, topyneck_parts=parts, topyneck_soup=soup)


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
