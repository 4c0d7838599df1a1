"""Reading a checkpoint written by the reference implementation, without running anything in it.

The reference writes Lightning checkpoints (``*.ckpt``: the module's ``state_dict`` next to
``hyper_parameters``, ``loops`` and whatever else its Lightning version adds) and plain state
dicts (``soup.pth``, ``topyneck.pth``). Only the tensors of the state dict are used.

``torch.load(weights_only=True)`` reads tensors and plain containers and refuses any other class
a file names. A Lightning checkpoint may name such classes outside its state dict, so when the
plain read is refused, every class or function the file names that torch does not allow is
allow-listed *as an inert placeholder* (:class:`Ignored`): the restricted unpickler then builds a
placeholder where the file asked for that object, and nothing the file names is imported or
called. A state dict that needed a placeholder itself (any value not a tensor) is refused.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor


class Ignored:
    """Stands in for an object of a class a checkpoint names outside its state dict; holds nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class ReferenceState(NamedTuple):
    tensors: dict[str, Tensor]
    ignored: list[str]  # the non-tensor globals the file names (module.name), read as placeholders


def _load(path: Path) -> tuple[Any, list[str]]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True), []
    except pickle.UnpicklingError:
        pass
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    with torch.serialization.safe_globals([(Ignored, name) for name in names]):
        return torch.load(path, map_location="cpu", weights_only=True), names


def read_reference(path: str | Path) -> ReferenceState:
    """The state dict of a reference checkpoint (Lightning ``.ckpt`` or a saved state dict).

    ValueError naming the file when it is not one: unreadable, no state dict, or a value that is
    not a tensor.
    """
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{file}: no such file")
    try:
        obj, ignored = _load(file)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise ValueError(f"{file}: not a torch checkpoint that can be read safely ({error})") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{file}: holds no state dict (a Lightning checkpoint or a saved state dict)")
    bad = [str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad:
        raise ValueError(f"{file}: state dict entries that are not tensors: {', '.join(bad[:5])}")
    return ReferenceState(dict(state), ignored)
