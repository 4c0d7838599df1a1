"""Atomic HDF5 files: written under a hidden temporary name, published by one rename.

A killed writer leaves at most a ``.NAME.*.tmp`` file beside the target; it never leaves a file
under the final name that looks complete but is not.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Self

import h5py

from memq.job import fsync_path, temp_path


class CommitOnExit:
    """As a context manager: ``commit()`` on a clean exit, ``abort()`` on an exception."""

    def commit(self) -> Path:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class AtomicH5(CommitOnExit):
    """An HDF5 file open for writing that appears at ``path`` only on :meth:`commit`.

    Used as a context manager it commits on a clean exit and discards the file on an exception.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.tmp_path = temp_path(self.path)
        self.file = h5py.File(self.tmp_path, "w")

    def commit(self) -> Path:
        self.file.flush()
        self.file.close()
        fsync_path(self.tmp_path)
        self.tmp_path.replace(self.path)
        fsync_path(self.path.parent, directory=True)
        return self.path

    def abort(self) -> None:
        if self.file.id.valid:
            self.file.close()
        self.tmp_path.unlink(missing_ok=True)
