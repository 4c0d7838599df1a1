"""Loading installed weights: the bytes are read once, checked against the manifest's sha256, and
only then parsed (safetensors: no code runs on load)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from safetensors.torch import load
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor

from jobs.weights.manifest import Entry, WeightsError, resolve


def verified_state_dict(root: Path, entry: Entry, key: str) -> dict[str, Tensor]:
    """The tensors of an installed entry; WeightsError if its file is not what was installed."""
    path = entry.path(root)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise WeightsError(
            f"{key}: {path} has sha256 {digest[:16]}..., not the {entry.sha256[:16]}... recorded when "
            f"{entry.name} was installed (changed or damaged): run `memq data weights {entry.name}` again"
        )
    return load(data)


def load_pretrained(vit: VisionTransformer, value: object, key: str, model: str, root: Path | None) -> Entry | None:
    """Fill ``vit`` (timm ``model``) with the weights the setting ``key`` = ``value`` names.

    ``random`` leaves it as initialised and returns None. timm's checkpoint filter takes timm and
    original DINOv2 keys and resamples the position embedding to the model's image size.
    """
    entry = resolve(root, key, value, model)
    if entry is None:
        return None
    assert root is not None  # resolve found the entry there
    state = verified_state_dict(root, entry, key)
    try:
        vit.load_state_dict(checkpoint_filter_fn(state, vit), strict=True)
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:400]
        raise WeightsError(f"{key}: {entry.name} does not fit the configured {model}: {reason}") from None
    return entry
