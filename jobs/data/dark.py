"""Where teacher predictions live in a prepared-data directory (``jobs/data/FORMAT.md``, "dark/").

Standard library only: the Mem config checks a teacher name with :data:`DARK_NAME_PATTERN` at submit.
The files are a ``mem.predict`` output directory (jobs/mem/ensemble/artifacts.py), published
here by ``mem.predict`` with ``dark: NAME`` and read by ``jobs/mem/dark.py``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DARK_DIR = "dark"
DARK_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
DARK_MANIFEST = "manifest.json"  # written last: a directory without it is incomplete
TEACHER_SPLIT = "train"  # the split a student is distilled on


def dark_dir(data_dir: str | os.PathLike[str], name: str, split: str) -> Path:
    """``DIR/dark/<name>/<split>/``: the teacher ``name``'s predictions of ``split``."""
    if not re.fullmatch(DARK_NAME_PATTERN, name):
        raise ValueError(f"teacher name {name!r}: letters, digits, '_', '.', '-' only")
    return Path(data_dir) / DARK_DIR / name / split


def missing_teacher(data_dir: str | Path, name: str) -> str | None:
    """Why the teacher ``name`` cannot be distilled from ``data_dir``, in one line; None if it can."""
    directory = dark_dir(data_dir, name, TEACHER_SPLIT)
    if (directory / DARK_MANIFEST).is_file():
        return None
    return (f"DATASET.DARK {name}: no teacher predictions in {directory} (a mem.predict job with split "
            f"{TEACHER_SPLIT} and dark: {name} makes them: the `teacher` group of grids/mem-light.yaml, run "
            "first, or one in this grid that the student's group waits for, as in grids/mem-light-distill.yaml)")
