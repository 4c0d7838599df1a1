"""The edges between a grid file's groups: ``after:`` (a group, or ``{group: G, match: [params]}``)
and ``each:`` (memq/each.py). What the file says is checked before any job is made; what needs the
jobs of the groups above (matched params, a job that matches nothing) as each group is expanded.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from memq.each import Expanded, Match, Values, values_of
from memq.errors import UserError
from memq.yamlsource import YamlSource

if TYPE_CHECKING:
    from memq.grid import GridFile, Group


def _did_you_mean(name: str, names: Sequence[str], otherwise: str) -> str:
    close = difflib.get_close_matches(name, list(names), n=1)
    return f"did you mean {close[0]!r}?" if close else otherwise


def _after_loc(i: int, group: Group, j: int) -> tuple[str | int, ...]:
    return ("groups", i, "after", j) if isinstance(group.after[j], str) else ("groups", i, "after", j, "group")


def check_dependencies(grid: GridFile, source: YamlSource) -> None:
    """Group names are unique; ``after`` and ``each`` name other groups, each once; ``each`` and
    a match name groups above (their jobs' keys are needed); no cycle."""
    names: dict[str, int] = {}
    for i, group in enumerate(grid.groups):
        if group.name in names:
            raise UserError(f"duplicate group name {group.name!r}",
                            where=source.where(source.line_of(("groups", i, "name"))),
                            hint=f"group {names[group.name]} already has it")
        names[group.name] = i
    for i, group in enumerate(grid.groups):
        for j, dep in enumerate(group.after_names):
            where = source.where(source.line_of(_after_loc(i, group, j)))
            if dep not in names:
                raise UserError(f"group {group.name!r} is after unknown group {dep!r}", where=where,
                                hint=_did_you_mean(dep, list(names), f"groups: {', '.join(names)}"))
            if dep == group.name:
                raise UserError(f"group {group.name!r} is after itself", where=where)
            if dep in group.after_names[:j]:
                raise UserError(f"group {group.name!r} lists {dep!r} in `after` twice", where=where,
                                hint="one item per group; a match lists every param to match")
            if not isinstance(group.after[j], str) and names[dep] > i:
                raise UserError(f"group {group.name!r}: after {{group: {dep}, match: ...}} is not a group above it",
                                where=where, hint="a match needs the jobs of a group defined earlier in the file")
        for j, followed in enumerate(group.each_of):
            loc = ("groups", i, "each", j) if isinstance(group.each, list) else ("groups", i, "each")
            if names.get(followed, i) >= i:
                raise UserError(f"group {group.name!r}: each: {followed!r} is not a group above it",
                                where=source.where(source.line_of(loc)),
                                hint=_did_you_mean(followed, list(names)[:i],
                                                   "each: names groups defined earlier in the file"))
    _check_cycles(grid, source, names)


def _check_cycles(grid: GridFile, source: YamlSource, names: dict[str, int]) -> None:
    after = {g.name: [*g.after_names, *g.each_of] for g in grid.groups}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in after[name]:
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep):], dep] if dep in path else [name, dep]
                group = grid.groups[names[name]]
                loc = (_after_loc(names[name], group, group.after_names.index(dep)) if dep in group.after_names
                       else ("groups", names[name], "each"))
                raise UserError("dependency cycle: " + " -> ".join(cycle), where=source.where(source.line_of(loc)))
            if dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for group in grid.groups:
        if group.name not in state:
            visit(group.name, [group.name])


def upstream_groups(grid: GridFile) -> dict[str, set[str]]:
    """Group -> every group it waits for, directly or not (``after:``, matched or not, and ``each:``)."""
    direct = {g.name: {*g.after_names, *g.each_of} for g in grid.groups}
    found: dict[str, set[str]] = {}

    def visit(name: str) -> set[str]:
        if name not in found:
            found[name] = set()  # (cycles were refused before)
            found[name] = {up for dep in direct[name] for up in (dep, *visit(dep))}
        return found[name]

    return {name: visit(name) for name in direct}


def matches_of(i: int, group: Group, own: set[str], done: Expanded, source: YamlSource) -> list[tuple[int, Match]]:
    """The group's ``after: {group, match}`` items (with their index in ``after``), each matched
    param a param of both groups (``own``: the group's)."""
    found = []
    for j, item in enumerate(group.after):
        if isinstance(item, str):
            continue
        jobs = done.jobs[item.group]
        theirs = set(jobs[0].params)
        for k, param in enumerate(item.match):
            missing = [name for name, params in ((group.name, own), (item.group, theirs)) if param not in params]
            if missing:
                raise UserError(f"group {group.name!r} matches {param!r}, which is not a parameter of group "
                                f"{missing[0]!r}", where=source.where(source.line_of(("groups", i, "after", j,
                                                                                       "match", k))),
                                hint=_did_you_mean(param, sorted(own & theirs), "params of both: "
                                                   + (", ".join(sorted(own & theirs)) or "none")))
        found.append((j, Match.of(item.group, item.match, jobs)))
    return found


def matched(i: int, group: Group, matches: list[tuple[int, Match]], params: dict[str, Any],
            source: YamlSource) -> list[tuple[Match, Values]]:
    """The values a job with ``params`` matches on, for each match item; a job that matches no job is an error."""
    out = []
    for j, match in matches:
        values = values_of(params, match.params)
        if values not in match.keys:
            shown = " ".join(f"{p}={v}" for p, v in zip(match.params, values, strict=True))
            theirs = sorted({" ".join(f"{p}={v}" for p, v in zip(match.params, vs, strict=True)) for vs in match.keys})
            raise UserError(f"job of {group.name} with {shown} matches no job of {match.group}",
                            where=source.where(source.line_of(("groups", i, "after", j))),
                            hint=f"{match.group} has {', '.join(theirs[:5])}" + (", ..." if len(theirs) > 5 else ""))
        out.append((match, values))
    return out

