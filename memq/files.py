"""Files published atomically: written under a hidden temporary name beside the target, then
renamed over it. A reader - another node over NFS, a resumed attempt - sees the old file or the
whole new one, never a part. ``durable`` adds the fsyncs that make the new file survive a crash.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temp_path(path: Path) -> Path:
    """A unique hidden name beside ``path`` (same directory, so the rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def publishing(path: str | os.PathLike[str], *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to fill; on a clean exit it becomes ``path``, else it is removed."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_path(final.parent, directory=True)


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], Any], *, durable: bool = True) -> Path:
    """Call ``write(tmp)`` to fill a temporary file, then publish it as ``path``."""
    with publishing(path, durable=durable) as tmp:
        write(tmp)
    return Path(path)


def write_text_atomically(path: str | os.PathLike[str], text: str, *, durable: bool = True) -> Path:
    return write_atomically(path, lambda tmp: tmp.write_text(text), durable=durable)


def apply_root_umask(root: Path) -> None:
    """New files get at most the root's permission bits (never group-writable unless it is)."""
    mode = stat.S_IMODE(root.stat().st_mode)
    os.umask(~mode & 0o077)
