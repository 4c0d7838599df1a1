"""``{name}`` placeholders in a command's argv: checked at submit, filled in by the worker.

A placeholder names a job parameter (dotted keys allowed, e.g. ``{OPTIMIZER.LR}``) or one of the
run-time fields below; ``{{`` and ``}}`` are literal braces. Each argv element stays one argument:
nothing is ever passed through a shell.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_.\-]*)\}")
SUBMIT_FIELDS = ("grid", "group", "repeat")
RUNTIME_FIELDS = ("job_id", "attempt", "job_dir", "scratch_dir")


def placeholders(argv: Iterable[str]) -> set[str]:
    return {m.group(1) for arg in argv for m in PLACEHOLDER.finditer(arg) if m.group(1)}


def has_stray_brace(arg: str) -> bool:
    """Whether ``arg`` has a brace that is neither doubled nor part of a ``{name}`` (``{x``, ``{}``)."""
    rest = PLACEHOLDER.sub("", arg)
    return "{" in rest or "}" in rest


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float) or value is None:
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"))


def render(argv: Iterable[str], values: Mapping[str, Any]) -> list[str]:
    """Fill every placeholder; KeyError names the first one without a value."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        return _text(values[name])

    return [PLACEHOLDER.sub(fill, arg) for arg in argv]
