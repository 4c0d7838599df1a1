"""The per-subject directories (``DIR/subjXX/``) shared by submissions and truth directories."""

from __future__ import annotations

import re
from pathlib import Path

from memq.job import UserError

SUBJECT_DIR = re.compile(r"subj\d{2}")


def subject_dirs(directory: Path, what: str, hint: str) -> list[str]:
    """Sorted subject ids with a ``subjXX/`` directory in ``directory``; raises if there are none."""
    if not directory.is_dir():
        raise UserError(f"no such {what} directory", where=str(directory), hint=hint)
    names = sorted(p.name for p in directory.iterdir() if p.is_dir() and SUBJECT_DIR.fullmatch(p.name))
    if not names:
        raise UserError(f"no subjXX/ directories in this {what} directory", where=str(directory), hint=hint)
    return names
