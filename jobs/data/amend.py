"""Changing a published HDF5 file atomically: a full copy with the change, renamed over the original.

Slower than editing in place (the betas or images are copied once), but a killed run leaves the
old file intact instead of a half-edited one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

import h5py

from jobs.data.atomic import AtomicH5


def rewrite(path: Path, edit: Callable[[h5py.File], None], skip: Collection[str] = ()) -> Path:
    """Publish a copy of ``path`` without its top-level objects ``skip``, changed by ``edit(file)``."""
    with h5py.File(path, "r") as source, AtomicH5(path) as out:
        out.file.attrs.update(dict(source.attrs))
        for name in source:
            if name not in skip:
                source.copy(source[name], out.file, name)
        edit(out.file)
    return path
