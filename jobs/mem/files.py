"""Checkpoints published atomically (memq.files): a reader - another node over NFS, a resumed
attempt, the checkpoint sync - never sees a partly written file under its final name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from memq.job import write_atomically


def save_atomically(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` published atomically; keep ``obj`` to tensors and plain containers so that
    it loads with ``weights_only=True``."""
    return write_atomically(path, lambda tmp: torch.save(obj, tmp))
