"""Job kind ``mem.soup``: the uniform or greedy soup of a trained job's registered checkpoints.

The checkpoints are first synced to the shared store (pulled over ssh from the node that has them
when needed), then averaged by :mod:`jobs.mem.ensemble.soup_recipes`, streaming and reading only verified bytes. A
checkpoint whose shared copy fails its checksum is copied again from its source; if that cannot
be done the job fails and says which: nothing corrupt is ever averaged. The greedy soup selects
on val1 and reports val2; the uniform soup reports val2 too (full passes, eval mode). With the
trained job's SWITCHES.GREEDY_SOUP val2_twice (COMPAT reference) the greedy soup is the
reference's: selected and reported on val2, the best checkpoint counted twice.

Output: ``<root>/soups/<grid>/<job>/<recipe>.pt`` (registered as the trained job's ``soup``, metric
= val2 r) and ``<recipe>.json`` beside it. Idempotent: a registered soup that verifies and was made
from the checkpoints registered now is kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from jobs.mem.build import Built, build
from jobs.mem.ensemble import soup_recipes as soups
from jobs.mem.ensemble.artifacts import remove_temporaries
from jobs.mem.ensemble.source import registered, stage_params
from jobs.mem.ensemble.stage_params import SoupParams
from jobs.mem.evaluate import mean_pearson
from jobs.mem.files import save_atomically
from memq.job import SOUP_ARTIFACT, ChecksumError, JobContext, SyncReport, soup_path, verify, write_text_atomically


class CheckpointsUnavailable(RuntimeError):
    """A checkpoint could not be read with its registered checksum, from any copy."""


def _problems(report: SyncReport) -> list[str]:
    for line in report.unreachable + report.corrupt:
        print(f"sync: {line}", flush=True)
    return report.unreachable + report.corrupt


def _checkpoints(ctx: JobContext, job_id: int, *, recheck: bool) -> list[dict[str, Any]]:
    """The job's checkpoints, synced to the shared store (``recheck``: re-hash shared copies first)."""
    report = ctx.sync_checkpoints([job_id], remote=True, recheck=recheck)
    problems = _problems(report)
    if problems and not recheck:  # recheck reports repaired copies too; the next load decides
        raise CheckpointsUnavailable("; ".join(problems))
    rows = ctx.checkpoints([job_id])
    if not rows:
        raise CheckpointsUnavailable(f"job {job_id} has no registered checkpoints")
    return rows


def soup_evaluator(ctx: JobContext, built: Built, selection_split: str) -> Any:
    """The greedy soup's ``evaluate``: loads a state into ``built``, scores it on ``selection_split``
    (selects) and val2 (reports)."""
    calls = 0

    def evaluate(state: dict[str, torch.Tensor]) -> tuple[float, float]:
        nonlocal calls
        calls += 1
        ctx.report_progress(evaluated=calls)
        built.model.load_trainable_state_dict(state)
        reported = mean_pearson(built, "val2")
        return (reported if selection_split == "val2" else mean_pearson(built, selection_split)), reported

    return evaluate


def greedy_soup(ctx: JobContext, rows: list[dict[str, Any]], built: Built) -> tuple[soups.GreedyResult, str]:
    """The greedy soup of ``rows`` as the source config's GREEDY_SOUP switch says it is made:
    (the result, the split it selected on)."""
    reference = built.config.switch("GREEDY_SOUP") == "val2_twice"
    split = "val2" if reference else "val1"
    return soups.greedy(rows, soup_evaluator(ctx, built, split), best_twice=reference), split


def _make(ctx: JobContext, rows: list[dict[str, Any]], recipe: str, built: Built,
          ) -> tuple[soups.StateDict, dict[str, Any]]:
    """(soup state, summary for the .json)."""
    if recipe == "greedy":
        result, split = greedy_soup(ctx, rows, built)
        return result.state, {"members": result.members, "selection_split": split, split: result.selection_score,
                              "val2": result.reported_score, "trace": result.trace}
    state = soups.uniform(rows)
    built.model.load_trainable_state_dict(state)
    return state, {"members": [row["id"] for row in rows], "val2": mean_pearson(built, "val2")}


def _current(path: Path, row: dict[str, Any] | None, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The summary of an existing soup if it verifies and was made from ``rows``; else None."""
    summary_path = path.with_suffix(".json")
    if row is None or not summary_path.is_file():
        return None
    try:
        verify(path, row["size"], row["sha256"])
    except ChecksumError:
        return None
    summary = json.loads(summary_path.read_text())
    return summary if summary["checkpoints"] == [r["sha256"] for r in rows] else None


def _make_verified(ctx: JobContext, job_id: int, rows: list[dict[str, Any]], recipe: str, built: Built,
                   ) -> tuple[list[dict[str, Any]], soups.StateDict, dict[str, Any]]:
    """:func:`_make`; on a checksum failure, every shared copy is re-hashed, bad ones are copied
    again from their source, and the soup is made once more. Returns the rows it was made from too."""
    try:
        return rows, *_make(ctx, rows, recipe, built)
    except ChecksumError as exc:
        print(f"{exc}: checking every shared copy and copying bad ones again", flush=True)
    rows = _checkpoints(ctx, job_id, recheck=True)
    try:
        return rows, *_make(ctx, rows, recipe, built)
    except ChecksumError as exc:
        raise CheckpointsUnavailable(f"{exc} (and no good copy could be made)") from None


def run(ctx: JobContext) -> None:
    params = stage_params(SoupParams, ctx)
    source = ctx.succeeded_job(params.source_job)
    path = soup_path(ctx.root, source["grid"], source["id"], params.recipe)
    rows = _checkpoints(ctx, source["id"], recheck=False)
    summary = _current(path, registered(ctx, source["id"], SOUP_ARTIFACT, str(path)), rows)
    if summary is not None:
        print(f"{path}: up to date", flush=True)
    else:
        remove_temporaries(path.parent, [path.name, path.with_suffix(".json").name])  # of a killed attempt
        built = build(source["params"], source["repeat"], ctx.gpus, ctx.root)
        rows, state, made = _make_verified(ctx, source["id"], rows, params.recipe, built)
        summary = {"source_job": source["id"], "recipe": params.recipe,
                   "checkpoints": [r["sha256"] for r in rows], **made}
        save_atomically(state, path)
        write_text_atomically(path.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
        ctx.register_artifact(source["id"], path, SOUP_ARTIFACT, metric=summary["val2"])
    ctx.record_metrics(val2_pearson=summary["val2"], members=len(summary["members"]))
    print(f"{params.recipe} soup of job {source['id']}: {len(summary['members'])} of {len(rows)} checkpoints, "
          f"val2 r {summary['val2']:.4f} -> {path}", flush=True)
