"""One number format per kind, for the page's text and tables and the figures alike: Pearson r with
4 decimals, scores in % with 1 decimal, counts with thousands separators; ``-`` where there is none."""

from __future__ import annotations

NONE = "-"


def r_text(value: float | None) -> str:
    return NONE if value is None else f"{value:.4f}"


def r_change_text(value: float | None) -> str:
    """A difference of two r values, signed."""
    return NONE if value is None else f"{value:+.4f}"


def score_text(value: float | None) -> str:
    return NONE if value is None else f"{value:.1f}%"


def count_text(value: int | None) -> str:
    return NONE if value is None else f"{value:,}"


def score_change_text(value: float | None) -> str:
    """A difference of two scores, in percentage points, signed."""
    return NONE if value is None else f"{value:+.1f}"
