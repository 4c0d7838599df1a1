"""Grid files: a YAML description of groups of jobs, expanded into job specs.

    name: smoke
    defaults:                    # any job field, inherited by every group
      kind: command              # or a registered Python kind, e.g. mem.train
      command: ["python", "train.py", "--subj", "{subj}"]
      resources: {gpus: 0, cpus: 1, mem_gb: 0}
      max_attempts: 3
      priority: 0
      params: {OPTIMIZER.LR: 0.0003}
    groups:
      - name: rois
        grid: {subj: [1, 2], roi: [E, V, L]}   # cartesian product
      - name: whole
        repeat: 3                              # three jobs with the same params
        params: {subj: 1, roi: all}
        after: [rois]                          # starts when every job of `rois` succeeded
      - name: plots
        each: rois                             # one job per job of `rois`, after it alone (memq/each.py)
      - name: maps
        grid: {subj: [1, 2]}
        after: [{group: rois, match: [subj]}]  # subj=2 waits for the jobs of `rois` with subj=2 only
    ensemble:                    # optional: what `memq soup` / `memq ensemble` derive from it
      soup: {kind: mem.soup, params: {recipe: greedy}}
      predict: {kind: mem.predict, splits: [predict, val2]}
      combine: {kind: mem.ensemble, resources: {gpus: 0}}

Every problem is reported as a UserError carrying FILE:LINE, before anything is written.
"""

from __future__ import annotations

import difflib
import itertools
from pathlib import Path
from typing import Annotated, Any

from pydantic import Discriminator, Field, JsonValue, Tag, ValidationError

from memq import kinds
from memq.after import check_dependencies, matched, matches_of, upstream_groups
from memq.each import SOURCE_PARAM, Expanded
from memq.errors import UserError
from memq.overrides import overrides_of
from memq.resources import Resources
from memq.resources import Strict as _Strict
from memq.spec import GridSpec, JobSpec, canonical_json, scheme_name
from memq.template import RUNTIME_FIELDS, SUBMIT_FIELDS, has_stray_brace, placeholders
from memq.yamlsource import YamlSource

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
MAX_JOBS = 1_000_000
# One job's params as JSON. A job receives them in its environment (MEMQ_PARAMS, and one variable
# per param), where Linux allows one variable 128 KiB: bigger inputs belong in a file.
MAX_PARAMS_BYTES = 65_536

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Params = dict[str, JsonValue]


class JobFields(_Strict):
    kind: str | None = None
    command: Annotated[list[str | int | float], Field(min_length=1)] | None = None
    resources: Resources | None = None
    max_attempts: Annotated[int, Field(ge=1, le=1000)] | None = None
    priority: int | None = None
    params: Params | None = None


class AfterMatch(_Strict):
    """`after: [{group: G, match: [params]}]`: a job waits for the jobs of G with its values of params."""

    group: str
    match: Annotated[list[str], Field(min_length=1)]


# A mapping is an AfterMatch, anything else a group name: one error, for the form meant (see _plain).
AFTER_TAGS = (_NAMED, _MATCHED) = ("after-name", "after-match")
AfterItem = Annotated[Annotated[str, Tag(_NAMED)] | Annotated[AfterMatch, Tag(_MATCHED)],
                      Discriminator(lambda value: _MATCHED if isinstance(value, dict | AfterMatch) else _NAMED)]


class Group(JobFields):
    name: Name
    grid: dict[str, Annotated[list[JsonValue], Field(min_length=1)]] | None = None
    repeat: Annotated[int, Field(ge=1, le=100_000)] = 1
    after: list[AfterItem] = Field(default_factory=list)  # memq/after.py
    each: Annotated[list[str], Field(min_length=1)] | str | None = None  # memq/each.py

    @property
    def each_of(self) -> list[str]:
        return [self.each] if isinstance(self.each, str) else list(self.each or [])

    @property
    def after_names(self) -> list[str]:
        """Every group named in `after`, matched or not."""
        return [item if isinstance(item, str) else item.group for item in self.after]


class Stage(_Strict):
    """One stage of the ensemble section: a Python kind and what its jobs get besides the
    parameters memq sets (see memq/coordinator.py)."""

    kind: str
    params: Params | None = None
    resources: Resources | None = None
    max_attempts: Annotated[int, Field(ge=1, le=1000)] | None = None
    priority: int | None = None


class PredictStage(Stage):
    splits: Annotated[list[Name], Field(min_length=1)]  # one job per trained job and split


class EnsembleSection(_Strict):
    soup: Stage
    predict: PredictStage
    combine: Stage


class GridFile(_Strict):
    name: Name
    description: str | None = None
    defaults: JobFields | None = None
    groups: Annotated[list[Group], Field(min_length=1)]
    ensemble: EnsembleSection | None = None
    anchors: dict[str, JsonValue] | None = None  # YAML anchors that groups merge (`<<: *name`); not read


_FIELD_NAMES = {
    "": set(GridFile.model_fields),
    "defaults": set(JobFields.model_fields),
    "groups": set(Group.model_fields),
    "resources": set(Resources.model_fields),
    "ensemble": set(EnsembleSection.model_fields),
    "soup": set(Stage.model_fields),
    "predict": set(PredictStage.model_fields),
    "combine": set(Stage.model_fields),
    "after": set(AfterMatch.model_fields),
}


def _loc_text(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _plain(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """A pydantic error location without the parts that are not in the file (validators, union tags)."""
    return tuple(p for p in loc if not (p in AFTER_TAGS or str(p).startswith(("function-", "json-"))))


def _friendly(err: dict[str, Any]) -> tuple[str, str | None]:
    """A pydantic error as (what, hint)."""
    loc = _plain(err["loc"])
    kind, where = err["type"], _loc_text(loc)
    if kind == "extra_forbidden":
        key = str(loc[-1])
        parent = next((str(p) for p in reversed(loc[:-1]) if isinstance(p, str)), "")
        close = difflib.get_close_matches(key, _FIELD_NAMES.get(parent, set()), n=1)
        hint = f"did you mean {close[0]!r}?" if close else None
        return f"unknown key {key!r}" + (f" in {_loc_text(loc[:-1])}" if len(loc) > 1 else ""), hint
    if kind == "missing":
        return f"{where}: required", None
    given = err.get("input")
    shown = repr(given) if not isinstance(given, dict | list) else type(given).__name__
    return f"{where}: {err['msg'].lower()}, got {shown}", None


def load_grid_file(path: Path) -> tuple[GridFile, YamlSource]:
    source = YamlSource(path)
    if not isinstance(source.data, dict):
        raise UserError("a grid file is a mapping with `name` and `groups`", where=source.where(1))
    try:
        return GridFile.model_validate(source.data), source
    except ValidationError as exc:
        # An unknown key is usually a typo that also explains a "missing" error: report it first.
        first = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        what, hint = _friendly(first)  # type: ignore[arg-type]
        raise UserError(what, where=source.where(source.line_of(_plain(first["loc"]))), hint=hint) from None


def _argv(command: list[str | int | float] | None) -> list[str] | None:
    return None if command is None else [str(arg) for arg in command]


def _merged(defaults: JobFields | None, group: Group) -> dict[str, Any]:
    base = defaults or JobFields()
    res: dict[str, Any] = {}
    for source in (base.resources, group.resources):
        if source is not None:
            res.update(source.model_dump(exclude_unset=True))
    return {
        "kind": group.kind or base.kind or kinds.COMMAND,
        "command": _argv(group.command if group.command is not None else base.command),
        "resources": res,
        "max_attempts": group.max_attempts or base.max_attempts or 3,
        "priority": group.priority if group.priority is not None else (base.priority or 0),
        "params": {**(base.params or {}), **(group.params or {})},
    }


def _unknown_kind(kind: str, where: str) -> UserError:
    close = difflib.get_close_matches(kind, kinds.known_kinds(), n=1)
    return UserError(f"unknown job kind {kind!r}", where=where,
                     hint=f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(kinds.known_kinds()))


def _check_ensemble(grid: GridFile, section: EnsembleSection, source: YamlSource) -> None:
    """Every stage names a registered Python kind, and the schemes to combine exist: a group, or
    GROUP-R for each repeat R of a repeated group (its params are checked when jobs are derived)."""
    schemes = section.combine.params.get("schemes") if section.combine.params else None
    if isinstance(schemes, list):
        known = [scheme_name(g.name, r, g.repeat > 1) for g in grid.groups for r in range(g.repeat)]
        for i, scheme in enumerate(schemes):
            if scheme not in known:
                close = difflib.get_close_matches(str(scheme), known, n=1)
                raise UserError(f"ensemble scheme {scheme!r} is not a group of this grid",
                                where=source.where(source.line_of(("ensemble", "combine", "params", "schemes", i))),
                                hint=f"did you mean {close[0]!r}?" if close else "schemes: " + ", ".join(known))
    for stage in EnsembleSection.model_fields:
        kind = getattr(section, stage).kind
        where = source.where(source.line_of(("ensemble", stage, "kind")))
        try:
            spec = kinds.lookup(kind)
        except KeyError:
            raise _unknown_kind(kind, where) from None
        if spec is None:
            raise UserError(f"ensemble stage {stage!r} needs a Python job kind, not `command`", where=where)


def _check_group(i: int, group: Group, merged: dict[str, Any], source: YamlSource) -> None:
    def where(*loc: str | int) -> str:
        return source.where(source.line_of(("groups", i, *loc)))

    kind = merged["kind"]
    try:
        spec = kinds.lookup(kind)
    except KeyError:
        raise _unknown_kind(kind, where("kind")) from None
    if spec is None and merged["command"] is None:
        raise UserError(f"group {group.name!r} has kind `command` but no `command`", where=where(),
                        hint='an argv list, e.g. command: ["python", "train.py", "--lr", "{lr}"]')
    if spec is not None and merged["command"] is not None:
        raise UserError(f"`command` is only for kind `command`, not {kind!r}", where=where("command"))
    names = _param_names(group, merged)
    overlap = set(merged["params"]) & set(group.grid or {})
    if overlap:
        raise UserError(f"parameter {sorted(overlap)[0]!r} is both fixed in params and varied in grid",
                        where=where("grid"))
    if merged["command"] is not None:
        command_loc = ("groups", i, "command") if group.command is not None else ("defaults", "command")
        for j, arg in enumerate(merged["command"]):
            if has_stray_brace(arg):
                raise UserError(f"command argument {arg!r} has a brace that is not part of a {{name}}",
                                where=source.where(source.line_of((*command_loc, j))),
                                hint="write {{ and }} for a literal brace")
        unknown = placeholders(merged["command"]) - names - set(SUBMIT_FIELDS) - set(RUNTIME_FIELDS)
        if unknown:
            name = sorted(unknown)[0]
            close = difflib.get_close_matches(name, [*names, *SUBMIT_FIELDS, *RUNTIME_FIELDS], n=1)
            raise UserError(f"command uses {{{name}}}, which is not a parameter of group {group.name!r}",
                            where=source.where(source.line_of(command_loc)),
                            hint=f"did you mean {{{close[0]}}}?" if close else "define it in params or grid")


def _param_names(group: Group, merged: dict[str, Any]) -> set[str]:
    return set(merged["params"]) | set(group.grid or {}) | ({SOURCE_PARAM} if group.each is not None else set())


def _distinct(i: int, name: str, values: list[Any], source: YamlSource, warnings: list[str]) -> list[Any]:
    """A grid axis without repeated values (they would make the same job twice), with a warning for each."""
    seen: set[str] = set()
    kept = []
    for j, value in enumerate(values):
        text = canonical_json(value)
        if text in seen:
            warnings.append(f"{source.where(source.line_of(('groups', i, 'grid', name, j)))}: grid axis {name!r} "
                            f"lists {text} more than once; it gets its jobs once (for identical jobs: repeat: N)")
        else:
            seen.add(text)
            kept.append(value)
    return kept


def _largest_params(fixed: dict[str, Any], axes: list[tuple[str, list[Any]]]) -> int:
    """The size of the largest job's params as canonical JSON, without making every job's: each item
    adds its key, its value and two separators (the braces count one), and the job that takes the
    largest value of every axis is among the jobs."""

    def item(key: str, value: Any) -> int:
        return len(canonical_json(key)) + len(canonical_json(value)) + 2

    return 1 + sum(item(k, v) for k, v in fixed.items()) + sum(max(item(k, v) for v in vs) for k, vs in axes)


def _validate_params(
    spec: kinds.KindSpec | None, i: int, params: dict[str, Any], source: YamlSource, root: Path | None
) -> None:
    check = kinds.validator(spec) if spec is not None else None
    if check is None:
        return
    try:
        check(params, root)
    except ValueError as exc:
        line = source.line_of(("groups", i))
        # the line of the key the message names first
        named = sorted((key for key in params if key in str(exc)), key=str(exc).index, reverse=True)
        for key in named:
            for loc in (("groups", i, "params", key), ("groups", i, "grid", key), ("defaults", "params", key)):
                line = source.line_of(loc, exact=True) or line
        raise UserError(str(exc), where=source.where(line)) from None


def validate_grid(grid: GridFile, source: YamlSource, done: Expanded, root: Path | None) -> None:
    """Each kind's whole-grid check (KindSpec.validate_grid) over every job of the grid, as
    {"group", "kind", "key", "params"} (built only when some kind has such a check); a problem is
    reported at its group's line."""
    checks = []
    for kind in sorted({job.kind for g in grid.groups for job in done.jobs[g.name]}):
        spec = kinds.lookup(kind)
        check = kinds.grid_validator(spec) if spec is not None else None
        if check is not None:
            checks.append(check)
    if not checks:
        return
    jobs = [{"group": g.name, "kind": job.kind, "key": job.key, "params": job.params}
            for g in grid.groups for job in done.jobs[g.name]]
    upstream = upstream_groups(grid)
    for check in checks:
        problem = check(jobs, upstream, root)
        if problem is not None:
            group, what = problem
            index = next(i for i, g in enumerate(grid.groups) if g.name == group)
            raise UserError(what, where=source.where(source.line_of(("groups", index))))


def expand(grid: GridFile, source: YamlSource, overrides: dict[str, Any] | None = None,
           root: Path | None = None) -> GridSpec:
    """Check a parsed grid file and expand it into job specs (nothing is written). Kinds' validators
    also get the memq ``root`` the jobs are for, None when it is not known (a dry run without one)."""
    check_dependencies(grid, source)
    if grid.ensemble is not None:
        _check_ensemble(grid, grid.ensemble, source)
    done = Expanded()
    count = 0
    warnings: list[str] = []
    fixed = [_merged(grid.defaults, group)["params"] for group in grid.groups]
    for i, group in enumerate(grid.groups):
        merged = _merged(grid.defaults, group)
        merged["params"].update(overrides_of(fixed[i], fixed, overrides or {}))
        _check_group(i, group, merged, source)
        spec = kinds.lookup(merged["kind"])
        try:
            resources = Resources.model_validate(merged["resources"]).placement(spec.gpus if spec is not None else 0)
        except ValueError as exc:
            raise UserError(str(exc), where=source.where(source.line_of(("groups", i)))) from None
        axes = [(name, _distinct(i, name, values, source, warnings)) for name, values in (group.grid or {}).items()]
        size = _largest_params(merged["params"], axes)
        if size > MAX_PARAMS_BYTES:
            raise UserError(f"a job's params take {size:,} bytes as JSON, more than {MAX_PARAMS_BYTES:,}",
                            where=source.where(source.line_of(("groups", i))),
                            hint="a job receives its params in its environment: pass big inputs as a file")
        if group.each is not None and (SOURCE_PARAM in merged["params"] or SOURCE_PARAM in (group.grid or {})):
            raise UserError(f"group {group.name!r} has `each:`, which sets {SOURCE_PARAM!r} itself",
                            where=source.where(source.line_of(("groups", i, "each"))))
        followed = done.followed(group.each_of) if group.each is not None else [None]
        matches = matches_of(i, group, _param_names(group, merged), done, source)
        done.jobs[group.name] = []
        for leader, combo in itertools.product(followed, itertools.product(*[values for _, values in axes])):
            params = {**merged["params"], **{name: value for (name, _), value in zip(axes, combo, strict=True)}}
            if leader is not None:
                params[SOURCE_PARAM] = done.root_key(leader)
            _validate_params(spec, i, params, source, root)
            store_group = done.place(group.name, leader, matched(i, group, matches, params, source))
            for r in range(group.repeat):
                job = JobSpec(grid=grid.name, group=store_group, kind=merged["kind"], params=params, repeat=r,
                              command=merged["command"], **resources,
                              priority=merged["priority"], max_attempts=merged["max_attempts"])
                done.jobs[group.name].append(job)
                if leader is not None:
                    done.roots[job.key] = str(params[SOURCE_PARAM])
                count += 1
                if count > MAX_JOBS:
                    raise UserError(f"the grid expands to more than {MAX_JOBS:,} jobs",
                                    where=source.where(source.line_of(("groups", i, "grid"))))
    validate_grid(grid, source, done, root)
    groups = tuple(spec for g in grid.groups for spec in done.group_specs(g.name, g.after))
    jobs = tuple(job for g in grid.groups for job in done.jobs[g.name])
    return GridSpec(name=grid.name, groups=groups, jobs=jobs, source=str(source.path.absolute()),
                    warnings=tuple(warnings))


def load_grid(path: Path, overrides: dict[str, Any] | None = None, root: Path | None = None) -> GridSpec:
    grid, source = load_grid_file(path)
    return expand(grid, source, overrides, root)
