"""A trained job's model and data, rebuilt from its params to load its checkpoints or soup.

Built as ``mem.train`` builds them (jobs/mem/train/fit.py): the same config, subjects and voxels, and
the same seed before the model, so frozen weights that are initialised rather than read from a
file come out as they were in training.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from jobs.data.layout import LayoutError
from jobs.mem.config import ConfigError, MemConfig, load_config
from jobs.mem.data import MemDataModule
from jobs.mem.model import MemModel
from jobs.mem.validate import teacher_problems, weights_problems
from memq.job import PermanentError


def job_config(params: Mapping[str, Any]) -> MemConfig:
    """The config named by a job's params; lower-case params are free grid parameters, not settings."""
    settings = {key: value for key, value in params.items() if key != key.lower()}
    try:
        return load_config(settings)
    except ConfigError as error:
        raise PermanentError("bad config: " + "; ".join(str(error).splitlines())) from None


def check_inputs(config: MemConfig, root: Path) -> None:
    """The data directory and every weight file the config names must exist (never downloaded), the
    backbone weights installed on ``root`` (verified by sha256 when the model loads them), and the
    teacher predictions of LOSS.DARK."""
    data_dir = config.DATASET.DIR
    if data_dir is None:
        raise PermanentError("DATASET.DIR is not set (the prepared-data directory)")
    if not Path(data_dir).is_dir():
        raise PermanentError(f"DATASET.DIR: data directory {data_dir} does not exist")
    topyneck = config.MODEL.TOPYNECK_PATH
    if topyneck is not None and not Path(topyneck).is_file():
        raise PermanentError(f"MODEL.TOPYNECK_PATH: file {topyneck} does not exist")
    problems = weights_problems(config, root) + teacher_problems(config)
    if problems:
        raise PermanentError("; ".join(problems))


@dataclass
class Built:
    config: MemConfig
    data: MemDataModule
    model: MemModel  # in eval mode, on ``device``
    device: torch.device

    @property
    def weights(self) -> dict[str, str]:
        """The frozen backbones' weights: setting -> "NAME sha256 HEX" (verified on load) or "random"."""
        backbones = {"MODEL.BACKBONE.WEIGHTS": self.model.current, "MODEL.BACKBONE_SMALL.WEIGHTS": self.model.previous}
        return {
            key: "not used (ABLATION.MEMORY_IMAGES false)" if branch is None
            else "random" if (entry := branch.backbone.weights) is None else f"{entry.name} sha256 {entry.sha256}"
            for key, branch in backbones.items()
        }


def build(params: Mapping[str, Any], repeat: int, gpus: list[int], root: Path, *, val_fraction: float = 1.0) -> Built:
    """The model and data of a job (its params and repeat), on the first GPU if any: built the
    same way for training and for loading its checkpoints or soup, seed included. Backbone
    weights are the ones installed on the memq ``root``."""
    config = job_config(params)
    check_inputs(config, root)
    device = torch.device("cuda" if gpus else "cpu")
    if gpus:
        # TF32 on the GPU. On a CPU, oneDNN emulates the lower precisions: several times slower
        torch.set_float32_matmul_precision(config.TRAINER.MATMUL_PRECISION)
    L.seed_everything(config.TRAINER.SEED + repeat, workers=True, verbose=False)
    dataset = config.DATASET
    assert dataset.DIR is not None  # checked above
    try:
        data = MemDataModule(
            dataset.DIR,
            dataset.SUBJECTS,
            dataset.ROIS,
            config.TRAINER.BATCH_SIZE,
            config.DATALOADER.NUM_WORKERS,
            n_prev_frames=dataset.N_PREV_FRAMES,
            image_size=dataset.IMAGE_SIZE,
            val_fraction=val_fraction,
            val_subset=config.switch("VAL_SUBSET"),
            prev_bhvs=config.switch("PREV_BHVS"),
            dark=config.dark_teacher,
            columns=config.ABLATION.columns,
            memory=config.ABLATION.MEMORY_IMAGES,
            space=dataset.FMRI_SPACE,
            t_image=config.EXPERIMENTAL.T_IMAGE,
            shuffle_seed=config.TRAINER.SEED + repeat if config.EXPERIMENTAL.SHUFFLE_IMAGES else None,
            seed=config.TRAINER.SEED + repeat,
        )
        model = MemModel(config, data.subject_info(), weights_root=root)
    except LayoutError as error:  # retrying cannot help; `memq retry` once the data is fixed
        atlas_w = any(roi.startswith("w_") for roi in dataset.ROIS or [])
        hint = " (atlas W: run `memq data atlas-w` first)" if atlas_w else ""
        raise PermanentError(f"{error}{hint}") from None
    except ValueError as error:  # e.g. a topyneck file without one of the subjects, weights that changed
        raise PermanentError(str(error)) from None
    built = Built(config, data, model.to(device).eval(), device)
    for key, weights in built.weights.items():
        print(f"{key}: {weights}", file=sys.stderr, flush=True)
    return built
