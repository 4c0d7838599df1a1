"""Read a YAML file safely and keep the line of every value, for `error: FILE:LINE: what`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from memq.errors import UserError


class YamlSource:
    """A parsed YAML document that can say on which line a value (by its path) was written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError("no such file", where=str(path)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read: {exc}", where=str(path)) from None
        try:
            self.node = yaml.compose(text, Loader=yaml.SafeLoader)
            self.data: Any = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            what = exc.problem or exc.context or "invalid YAML"
            raise UserError(f"invalid YAML: {what}", where=self.where(line)) from None
        except yaml.YAMLError as exc:
            raise UserError(f"invalid YAML: {exc}", where=str(path)) from None
        self._check_duplicate_keys(self.node)

    def where(self, line: int | None) -> str:
        return f"{self.path}:{line}" if line else str(self.path)

    def _check_duplicate_keys(self, node: yaml.Node | None) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key, value in node.value:
                if key.value in seen:
                    raise UserError(f"duplicate key {key.value!r}", where=self.where(key.start_mark.line + 1))
                seen.add(key.value)
                self._check_duplicate_keys(value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                self._check_duplicate_keys(item)

    def line_of(self, loc: Sequence[str | int], *, exact: bool = False) -> int | None:
        """Line (1-based) of the value at ``loc``, or of the deepest part of it that exists
        (None instead with ``exact``)."""
        node = self.node
        if node is None:
            return None
        line = node.start_mark.line + 1
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
                if match is None:
                    return None if exact else line
                key, node = match
                line = key.start_mark.line + 1
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return None if exact else line
        return line
