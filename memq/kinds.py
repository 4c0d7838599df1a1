"""The registry of job kinds, resolved by name.

``command`` runs an argv list. Every other kind is a Python job: a ``KindSpec`` published under the
``memq.kinds`` entry-point group, naming (as strings, so nothing heavy is imported at submit time)
the function the runner calls and an optional light parameter validator used at submit time.
memq never imports ``jobs`` except through these names (design.md 2).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

COMMAND = "command"
ENTRY_POINT_GROUP = "memq.kinds"


@dataclass(frozen=True)
class KindSpec:
    """A Python job kind: ``target`` is "module:function" called with a JobContext."""

    name: str
    target: str
    validate: str | None = None  # "module:function(params, root) -> None", raises ValueError; root: Path | None
    # "module:function(jobs, upstream, root) -> (group, problem) | None": a check of the kind's jobs that
    # needs the whole grid (e.g. an input that an earlier group makes); see memq.grid.validate_grid
    validate_grid: str | None = None
    description: str = ""
    gpus: int = 1  # the default GPU count of its jobs


class KindNotImplemented(RuntimeError):
    """A reserved kind whose code is not part of this installation yet."""


def load_object(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _absent(ref: str, exc: ModuleNotFoundError) -> bool:
    """True when the missing module is the one ``ref`` names (not a dependency it imports)."""
    module = ref.partition(":")[0]
    return exc.name is not None and (module == exc.name or module.startswith(exc.name + "."))


@cache
def registry() -> dict[str, KindSpec]:
    found: dict[str, KindSpec] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        spec = ep.load()
        if not isinstance(spec, KindSpec) or spec.name != ep.name:
            raise RuntimeError(f"entry point {ep.name} = {ep.value} is not a KindSpec named {ep.name!r}")
        found[ep.name] = spec
    return found


def known_kinds() -> list[str]:
    return [COMMAND, *sorted(registry())]


def lookup(name: str) -> KindSpec | None:
    """The spec of a Python kind; None for ``command``; KeyError if unknown."""
    if name == COMMAND:
        return None
    return registry()[name]


def _optional(ref: str | None) -> Any:
    """The object ``ref`` names, or None when there is none or its module is not installed yet."""
    if ref is None:
        return None
    try:
        return load_object(ref)
    except ModuleNotFoundError as exc:
        if _absent(ref, exc):
            return None
        raise


def validator(spec: KindSpec) -> Callable[[dict[str, Any], Path | None], None] | None:
    """The kind's submit-time parameter check, or None if it has none (or is not installed yet)."""
    return _optional(spec.validate)


def grid_validator(spec: KindSpec) -> Callable[..., tuple[str, str] | None] | None:
    """The kind's whole-grid check, or None."""
    return _optional(spec.validate_grid)


def entry_function(spec: KindSpec) -> Callable[..., Any]:
    """The function a worker runs for this kind; KindNotImplemented if its code is absent."""
    try:
        return load_object(spec.target)
    except (ModuleNotFoundError, AttributeError) as exc:
        if isinstance(exc, ModuleNotFoundError) and not _absent(spec.target, exc):
            raise
        raise KindNotImplemented(
            f"job kind {spec.name!r} is reserved but not implemented in this installation "
            f"({spec.target}: {exc})") from exc
