"""The random generators' state in the resume file, so that a resumed run draws what the
uninterrupted run would have drawn: the train shuffle, the voxel subsets, dropout, a redrawn
validation subset.

Lightning's resume restores weights, optimiser, schedule and loops but not the generators: a run
resumed after epoch N drew epoch 0's shuffle and subsets again and trained other weights than the
uninterrupted run. The state is taken when the resume file is written (an epoch's end, after its
validation) and set back as the next epoch starts, before its sampler draws.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def capture() -> dict[str, Any]:
    """The state of torch's CPU generator (and the current GPU's), NumPy's and Python's, in types
    that ``torch.load(weights_only=True)`` reads back."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class ResumableRandomness(Callback):
    """Saves the generators with the resume file; a resumed run sets them back at its first epoch."""

    def __init__(self) -> None:
        self._resumed: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return capture()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resumed = state_dict

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._resumed is not None:
            restore(self._resumed)
            self._resumed = None
