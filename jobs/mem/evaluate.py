"""Running a built model over a whole split in eval mode: predictions per subject, and mean r."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from jobs.mem.build import Built
from jobs.mem.data import MemDataset, collate_by_subject
from jobs.mem.pearson import PearsonSums

AUTOCAST = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def _precision(built: Built) -> contextlib.AbstractContextManager[object]:
    """The config's mixed precision on a GPU (as in training); float32 on a CPU."""
    dtype = AUTOCAST.get(built.config.TRAINER.PRECISION)
    if built.device.type == "cpu" or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(built.device.type, dtype=dtype)


def subject_batches(built: Built, dataset: MemDataset) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
    """(samples, predictions float32 [B, n_model_voxels]) of one subject's split, in split order."""
    loader = DataLoader(dataset, batch_size=built.config.TRAINER.BATCH_SIZE,
                        num_workers=built.config.DATALOADER.NUM_WORKERS, collate_fn=collate_by_subject)
    with torch.inference_mode(), _precision(built):
        for batch in loader:
            samples = {k: v.to(built.device) for k, v in batch[dataset.subject].items()}
            yield samples, built.model(samples, dataset.subject).float()


def pearson_by_subject(built: Built, split: str) -> dict[str, Tensor]:
    """Per subject, the per-voxel Pearson r [n_s] of its modelled voxels, one full pass over ``split``."""
    r = {}
    for dataset in built.data.datasets(split):
        sums = PearsonSums(built.model.n_voxels[dataset.subject])
        for samples, preds in subject_batches(built, dataset):
            sums.update(preds, samples["y"])
        r[dataset.subject] = sums.compute().cpu()
    return r


def mean_pearson(built: Built, split: str) -> float:
    """Mean per-voxel Pearson r over every modelled voxel of every subject (as the validation
    metric weighs them), one full pass over ``split``."""
    return float(torch.cat(list(pearson_by_subject(built, split).values())).mean())
