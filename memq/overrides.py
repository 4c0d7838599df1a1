"""`memq submit --set KEY=VALUE`: parsing, and which groups of a grid a value goes to."""

from __future__ import annotations

import re
from typing import Any

from memq.errors import UserError


def overrides_of(params: dict[str, Any], every: list[dict[str, Any]], overrides: dict[str, Any]) -> dict[str, Any]:
    """The --set values for one group: the keys its params have; a key that no group has goes to
    every group (a grid of several kinds sets, e.g., DATASET.DIR in its Mem groups only)."""
    return {key: value for key, value in overrides.items() if key in params or not any(key in p for p in every)}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs from --set; VALUE is read as YAML (numbers, lists, strings)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", key):
            raise UserError(f"--set {item!r} is not KEY=VALUE", where="--set")
        try:
            out[key] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            out[key] = value
    return out
