"""Read a YAML file safely and keep the line of every value, for `error: FILE:LINE: what`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from memq.errors import UserError

# A grid file is written by hand (or a script): far below these, while a few lines of aliases
# (a "billion laughs") expand to billions of values, and deep nesting exhausts the stack.
MAX_ALIASED = 100_000  # values that aliases add to the document, counted as they are expanded
MAX_DEPTH = 100


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents that expand beyond the limits above before
    anything walks the expansion (an alias is one node in the composed graph, not a copy)."""

    def __init__(self, text: str, source: YamlSource) -> None:
        super().__init__(text)
        self.source = source
        self.aliased = 0
        self.depth = 0
        self.measured: dict[int, tuple[int, int]] = {}  # see _measure, by the node's id

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        line = event.start_mark.line + 1
        levels = 1
        if isinstance(event, yaml.AliasEvent) and event.anchor in self.anchors:
            node = self.anchors[event.anchor]
            if node.end_mark is None:  # still being composed: the alias is inside its own anchor
                raise UserError(f"alias *{event.anchor} is inside its own anchor", where=self.source.where(line))
            values, levels = self._measure(node)
            self.aliased += values
            if self.aliased > MAX_ALIASED:
                raise UserError(f"aliases expand to more than {MAX_ALIASED:,} values", where=self.source.where(line),
                                hint="a YAML alias bomb? write the values out")
        if self.depth + levels > MAX_DEPTH:
            raise UserError(f"nested more than {MAX_DEPTH} levels deep", where=self.source.where(line))
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        """How many values ``node`` stands for, and how many levels deep they go, once every alias
        in it is expanded."""
        if id(node) not in self.measured:
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            measures = [self._measure(child) for child in children]
            self.measured[id(node)] = (1 + sum(values for values, _ in measures),
                                       1 + max((levels for _, levels in measures), default=0))
        return self.measured[id(node)]


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
            loader = _BoundedLoader(text, self)
            try:
                self.node = loader.get_single_node()
            finally:
                loader.dispose()
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
