"""`memq soup` and `memq ensemble`: the jobs that turn a trained grid into soups and an ensemble.

The grid file's ``ensemble:`` section names a Python kind per stage (memq/grid.py). From the
grid's succeeded jobs memq derives the grid ``<grid>-ensemble``:

    soup-<recipe>-<id>     one job of the soup kind per trained job    params: source_job, recipe
    predict-<recipe>-<id>  after its soup: one job per predict split   params: source_job, recipe, split
    combine-<recipe>       after every predict group: one job          params: grid, out, recipe, jobs
                                                                               (+ partial: true)

on top of each stage's own ``params``. Soups of another recipe are other groups: nothing of one
recipe waits for the other. Submitting is idempotent (the store's unique job keys): a
rerun adds nothing that exists, requeues derived jobs that failed or were cancelled, and cancels
unfinished combine jobs of an earlier plan that write to the same directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memq import kinds
from memq.errors import UserError
from memq.grid import EnsembleSection, GridFile, Stage, expand, load_grid_file
from memq.resources import Resources
from memq.spec import GridSpec, GroupSpec, JobSpec
from memq.store.store import Store
from memq.yamlsource import YamlSource

RECIPES = ("uniform", "greedy")  # the soup job's recipes (jobs/mem/ensemble/soup_recipes.py)
DEFAULT_RECIPE = "uniform"
SUFFIX = "-ensemble"
COMBINE = "combine"
MAX_NAME = 128  # the store's grid-name column


@dataclass(frozen=True)
class Section:
    """A grid file with an ensemble section."""

    grid: GridFile
    source: YamlSource
    ensemble: EnsembleSection


@dataclass(frozen=True)
class Plan:
    spec: GridSpec  # the derived grid
    stages: dict[str, str]  # job key -> stage (soup, predict, combine)


def load_section(store: Store, grid: str) -> Section:
    """A grid file (path), or the file a grid (name) in this root was submitted from, checked."""
    path = Path(grid)
    if not path.is_file():
        known = {row["name"]: row["source"] for row in store.grids()}
        if grid not in known or not known[grid]:
            raise UserError("no such grid file, nor a grid of that name in this root", where=grid)
        path = Path(known[grid])
    parsed, source = load_grid_file(path)
    expand(parsed, source)  # every check `memq submit` makes
    if parsed.ensemble is None:
        raise UserError("the grid file has no `ensemble:` section", where=str(path),
                        hint="ensemble: {soup: {kind: mem.soup}, predict: {kind: mem.predict, splits: [predict, "
                             "val2]}, combine: {kind: mem.ensemble}}")
    if len(parsed.name + SUFFIX) > MAX_NAME:
        raise UserError(f"grid name too long to derive {parsed.name + SUFFIX!r}", where=source.where(1))
    return Section(parsed, source, parsed.ensemble)


def trained_jobs(store: Store, grid: str, *, partial: bool) -> list[dict[str, Any]]:
    """The grid's succeeded jobs; unless ``partial``, every job of the grid must have succeeded."""
    rows = store.jobs(grid=grid)
    if not rows:
        raise UserError(f"grid {grid!r} has no jobs in this root", hint="`memq submit GRID_FILE` first")
    done = [row for row in rows if row["state"] == "succeeded"]
    waiting = [row for row in rows if row["state"] != "succeeded"]
    if not done or (waiting and not partial):
        shown = ", ".join(f"#{r['id']} {r['group']} {r['state']}" for r in waiting[:8])
        more = f" and {len(waiting) - 8} more" if len(waiting) > 8 else ""
        hint = (f"wait (memq status), `memq retry --failed --grid {grid}`, or pass --partial to use the "
                "succeeded ones") if done else "no job has succeeded yet"
        raise UserError(f"{len(waiting)} of {len(rows)} jobs of grid {grid!r} have not succeeded: {shown}{more}",
                        hint=hint)
    return done


def resolve_recipe(section: Section, recipe: str | None) -> str:
    chosen = recipe or (section.ensemble.soup.params or {}).get("recipe") or DEFAULT_RECIPE
    if chosen not in RECIPES:
        where = "--recipe" if recipe else section.source.where(section.source.line_of(("ensemble", "soup", "params")))
        raise UserError(f"unknown soup recipe {chosen!r}", where=where, hint=" or ".join(RECIPES))
    return str(chosen)


def _job(section: Section, stage: str, group: str, grid: str, params: dict[str, Any]) -> JobSpec:
    """A derived job of ``stage``, its params checked by its kind's validator (and its resources)."""
    config: Stage = getattr(section.ensemble, stage)
    spec = kinds.lookup(config.kind)
    assert spec is not None  # the section check refuses `command`
    merged = {**(config.params or {}), **params}
    check = kinds.validator(spec)
    try:
        if check is not None:
            check(merged)
        resources = (config.resources or Resources()).placement(spec.gpus)
    except ValueError as exc:
        where = section.source.where(section.source.line_of(("ensemble", stage)))
        raise UserError(str(exc), where=where) from None
    return JobSpec(grid=grid, group=group, kind=config.kind, params=merged, **resources,
                   priority=config.priority or 0, max_attempts=config.max_attempts or 3)


def plan(section: Section, trained: Sequence[dict[str, Any]], *, recipe: str, out: Path | None = None,
         partial: bool = False) -> Plan:
    """The derived grid: soups of ``trained`` jobs, and with ``out`` their predictions and the ensemble."""
    name = section.grid.name + SUFFIX
    groups: list[GroupSpec] = []
    jobs: list[JobSpec] = []
    stages: dict[str, str] = {}

    def add(stage: str, group: str, after: tuple[str, ...], params: list[dict[str, Any]]) -> None:
        groups.append(GroupSpec(group, after))
        for p in params:
            job = _job(section, stage, group, name, p)
            jobs.append(job)
            stages[job.key] = stage

    ids = sorted(row["id"] for row in trained)
    for job_id in ids:
        add("soup", f"soup-{recipe}-{job_id}", (), [{"source_job": job_id, "recipe": recipe}])
    if out is not None:
        splits = section.ensemble.predict.splits
        for job_id in ids:
            add("predict", f"predict-{recipe}-{job_id}", (f"soup-{recipe}-{job_id}",),
                [{"source_job": job_id, "recipe": recipe, "split": split} for split in splits])
        combine: dict[str, Any] = {"grid": section.grid.name, "out": str(out), "recipe": recipe, "jobs": ids}
        if partial:
            combine["partial"] = True
        add(COMBINE, f"{COMBINE}-{recipe}", tuple(f"predict-{recipe}-{job_id}" for job_id in ids), [combine])
    return Plan(GridSpec(name, tuple(groups), tuple(jobs), source=str(section.source.path.absolute())), stages)


@dataclass(frozen=True)
class Submitted:
    added: int
    requeued: list[int]  # derived jobs that had failed or been cancelled
    superseded: list[int]  # unfinished combine jobs of other plans with the same output


def submit(store: Store, planned: Plan) -> Submitted:
    result = store.submit(planned.spec)
    rows = store.jobs(grid=planned.spec.name)
    ours = [row for row in rows if row["key"] in planned.stages]
    requeue = [row["id"] for row in ours if row["state"] in ("failed", "cancelled")]
    if requeue:
        store.retry(requeue)
    outs = {job.params["out"] for job in planned.spec.jobs if planned.stages[job.key] == COMBINE}
    stale = [row["id"] for row in rows if row["group"].startswith(COMBINE) and row["key"] not in planned.stages
             and row["params"].get("out") in outs and row["state"] in ("queued", "running")]
    if stale:
        store.cancel(stale)
    return Submitted(result.added, requeue, stale)
