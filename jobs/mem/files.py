"""Files published atomically: written under a hidden temporary name, fsynced, then renamed.

A reader (another node over NFS, a resumed attempt, the checkpoint sync) never sees a partly
written checkpoint under its final name.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then publish it as ``path``."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        _fsync(tmp)
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync(final.parent, directory=True)
    return final


def save_atomically(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` published atomically; keep ``obj`` to tensors and plain containers so that
    it loads with ``weights_only=True``."""
    return write_atomically(path, lambda tmp: torch.save(obj, tmp))
