"""Atomic HDF5 files: written under a hidden temporary name, published by one rename.

A killed writer leaves at most a ``.NAME.*.tmp`` file beside the target; it never leaves a file
under the final name that looks complete but is not.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from types import TracebackType

import h5py


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicH5:
    """An HDF5 file open for writing that appears at ``path`` only on :meth:`commit`.

    Used as a context manager it commits on a clean exit and discards the file on an exception.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.tmp_path = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        self.file = h5py.File(self.tmp_path, "w")

    def commit(self) -> Path:
        self.file.flush()
        self.file.close()
        _fsync(self.tmp_path)
        self.tmp_path.replace(self.path)
        _fsync(self.path.parent, directory=True)
        return self.path

    def abort(self) -> None:
        if self.file.id.valid:
            self.file.close()
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> AtomicH5:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
