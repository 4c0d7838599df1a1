"""Reading state dicts from local files that a setting or an option names (``MODEL.TOPYNECK_PATH``,
``memq data atlas-w --from-soup``): never from the network, and unlike installed weights not
checked against a manifest."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor


def read_state_dict(path: str, key: str) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file, or of a torch file read with ``weights_only=True``.

    ``key`` is the setting that named the file; a missing file raises FileNotFoundError naming it.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{key}: file {path} does not exist (weights are never downloaded)")
    if file.suffix == ".safetensors":
        return load_file(file)
    return torch.load(file, map_location="cpu", weights_only=True)
