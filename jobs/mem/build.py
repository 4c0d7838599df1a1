"""A trained job's model and data, rebuilt from its params to load its checkpoints or soup.

Built as ``mem.train`` builds them (jobs/mem/fit.py): the same config, subjects and voxels, and
the same seed before the model, so frozen weights that are initialised rather than read from a
file come out as they were in training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from jobs.mem.config import MemConfig
from jobs.mem.data import MemDataModule
from jobs.mem.fit import check_inputs, job_config
from jobs.mem.model import MemModel, SubjectInfo
from memq.runner import PermanentError


@dataclass
class Built:
    config: MemConfig
    data: MemDataModule
    model: MemModel  # in eval mode, on ``device``
    device: torch.device


def build(params: Mapping[str, Any], repeat: int, gpus: list[int]) -> Built:
    """The model and data of a trained job (its params and repeat), on the first GPU if any."""
    config = job_config(params)
    check_inputs(config)
    device = torch.device("cuda" if gpus else "cpu")
    if gpus:
        torch.set_float32_matmul_precision(config.TRAINER.MATMUL_PRECISION)
    L.seed_everything(config.TRAINER.SEED + repeat, workers=True, verbose=False)
    dataset = config.DATASET
    assert dataset.DIR is not None  # checked above
    data = MemDataModule(
        dataset.DIR,
        dataset.SUBJECTS,
        dataset.ROIS,
        config.TRAINER.BATCH_SIZE,
        config.DATALOADER.NUM_WORKERS,
        n_prev_frames=dataset.N_PREV_FRAMES,
        image_size=dataset.IMAGE_SIZE,
    )
    try:
        model = MemModel(config, {s: SubjectInfo(info.coords, info.roi) for s, info in data.subject_info().items()})
    except ValueError as error:  # e.g. a topyneck file without one of the subjects
        raise PermanentError(str(error)) from None
    return Built(config, data, model.to(device).eval(), device)
