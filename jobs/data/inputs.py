"""Checked reading of input files: every problem is a UserError naming the file and what was expected."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jobs.data.params import parse_subject
from memq.job import UserError


def subject_name(value: str | int) -> str:
    """``3``, ``"03"`` or ``"subj03"`` -> ``"subj03"``."""
    try:
        return parse_subject(value)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def subject_list(values: str | None) -> list[str] | None:
    """A comma-separated subject list (None: not given)."""
    if values is None:
        return None
    return sorted({subject_name(v) for v in values.split(",") if v.strip()})


def reason(exc: BaseException) -> str:
    """The first line of an exception's message: error lines stay one line."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def require_file(path: Path, what: str, hint: str | None = None) -> Path:
    if not path.is_file():
        raise UserError(f"missing {what}", where=str(path), hint=hint)
    return path


def load_npy(path: Path, what: str) -> np.ndarray:
    """A plain (non-pickled) ``.npy`` array."""
    require_file(path, what)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise UserError(f"not a readable .npy array ({reason(exc)})", where=str(path), hint=f"expected {what}") from exc


def integer_valued(path: Path, name: str, values: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``values`` as int64, or raise unless every value is an integer in [lo, hi]."""
    values = np.asarray(values)
    if values.dtype.kind not in "iufb" or not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        raise UserError(f"{name} must hold integers, got {values.dtype} values", where=str(path))
    values = values.astype(np.int64)
    if values.size and (values.min() < lo or values.max() > hi):
        raise UserError(
            f"{name} holds values in [{values.min()}, {values.max()}], expected [{lo}, {hi}]", where=str(path)
        )
    return values
