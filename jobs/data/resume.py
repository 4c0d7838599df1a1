"""Skipping work that is done: a published subject file made from the same inputs and options."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jobs.data.layout import LayoutError, open_subject

RECIPE_ATTR = "prepared_with"


def recipe(params: Mapping[str, Any]) -> str:
    """The canonical text of what a file was made from (stored as its ``prepared_with`` attribute)."""
    return json.dumps({k: str(v) for k, v in params.items()}, sort_keys=True)


def subject_done(path: Path, made_from: str) -> bool:
    """True if ``path`` is a valid subject file made with ``made_from`` (atomic writes make it complete)."""
    if not path.is_file():
        return False
    try:
        with open_subject(path) as f:
            return f.file.attrs.get(RECIPE_ATTR) == made_from
    except LayoutError:
        return False
