"""`memq report`: one HTML page on a grid's jobs, its ensemble and, given a test truth, its score.

Files in the output directory, always under these names:

    index.html    the page: inline CSS, no scripts, nothing fetched; it references the PNGs beside it
    curves.png    validation r per epoch of every job with CSV logs, one panel per group (jobs/eval/logs.py)
    schemes.png   from ENSEMBLE/scores.json: each scheme alone, and the ensemble as schemes are added
    scores.png    with --truth: the test score of the submission in ENSEMBLE per subject and stream ROI
    surface.png   with --truth: the voxel-wise test score on fsaverage5, averaged over subjects
                  (jobs/eval/surface.py; vertex ids from the prepared data, --data or the jobs' DATASET.DIR)

A section whose inputs are missing says so on the page instead. PNGs of an earlier report that this
one does not draw are removed; index.html is written last (temporary name, then rename).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.data.truth import HEMIS
from jobs.eval.logs import val_curve
from jobs.eval.page import Page
from jobs.eval.plots import Curve, curves_figure, save, schemes_figure, score_figure
from jobs.eval.score import SubjectScores, score_dirs, scores_json
from memq.job import UserError

PAGE = "index.html"
CURVES, SCHEMES, SCORES, SURFACE = "curves.png", "schemes.png", "scores.png", "surface.png"
SCORES_FILE, MANIFEST_FILE = "scores.json", "ensemble.json"


@dataclass(frozen=True)
class ReportInputs:
    grid: str
    root: Path
    jobs: list[dict[str, Any]]  # the store's job rows of the grid
    out: Path
    ensemble: Path | None = None  # the ensemble's output directory (submission, scores.json, ensemble.json)
    truth: Path | None = None  # a test truth (jobs/data/TRUTH.md)
    data: Path | None = None  # prepared data (subjXX.h5) for the surface's vertex ids


def job_label(job: dict[str, Any]) -> str:
    rois = job["params"].get("DATASET.ROIS")
    return f"#{job['id']} {','.join(map(str, rois))}" if rois else f"#{job['id']} repeat {job['repeat']}"


def _states(jobs: list[dict[str, Any]]) -> str:
    states = Counter(job["state"] for job in jobs)
    return f"{len(jobs)} jobs: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))


def _jobs_section(page: Page, jobs: list[dict[str, Any]]) -> None:
    page.heading("Jobs")
    rows = [
        [job["id"], job["group"], job_label(job), job["state"], job["attempt"],
         (job["metrics"] or {}).get("val_pearson"), (job["metrics"] or {}).get("epochs")]
        for job in jobs
    ]  # fmt: skip
    page.table(["id", "group", "job", "state", "attempt", "val r", "epochs"], rows)


def _curves_section(page: Page, inputs: ReportInputs) -> None:
    page.heading("Validation curves")
    groups: dict[str, list[Curve]] = defaultdict(list)
    unlogged = []
    for job in inputs.jobs:
        curve = val_curve(inputs.root, inputs.grid, job["id"], job["attempt"])
        if curve is None:
            unlogged.append(f"{job_label(job)} ({job['state']})")
        else:
            groups[job["group"]].append(Curve(job_label(job), *curve))
    if groups:
        page.image(save(curves_figure(groups), inputs.out / CURVES).name, "validation r per epoch of each job")
    if unlogged:
        page.text(f"No CSV logs with validation r for {len(unlogged)} jobs: {'; '.join(unlogged)}.", note=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"not a readable JSON file ({exc})", where=str(path)) from exc


@dataclass(frozen=True)
class SchemeScores:
    """``scores.json`` of an ensemble: validation r of each scheme alone and of the growing ensemble."""

    alone: dict[str, float]  # scheme -> mean r
    per_subject: dict[str, dict[str, Any]]  # scheme -> subject -> r
    cumulative: list[tuple[str, float]]  # (the scheme added, the ensemble's mean r), in order


def read_scheme_scores(path: Path) -> SchemeScores:
    raw = _read_json(path)
    try:
        schemes = raw["per_scheme"]
        return SchemeScores(
            alone={name: float(entry["mean"]) for name, entry in schemes.items()},
            per_subject={name: dict(entry.get("per_subject", {})) for name, entry in schemes.items()},
            cumulative=[(str(step["schemes"][-1]), float(step["mean"])) for step in raw["cumulative"]],
        )
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise UserError(
            f"unexpected structure ({type(exc).__name__}: {exc})",
            where=str(path),
            hint='expected {"per_scheme": {NAME: {"mean": r, "per_subject": {...}}}, '
            '"cumulative": [{"schemes": [...], "mean": r}, ...]}',
        ) from exc


def _schemes(page: Page, scores: SchemeScores, out: Path) -> None:
    page.image(save(schemes_figure(scores.alone, scores.cumulative), out / SCHEMES).name, "val2 r of the schemes")
    if scores.cumulative and scores.alone:
        best = max(scores.alone, key=scores.alone.__getitem__)
        final = scores.cumulative[-1][1]
        page.text(
            f"Ensemble of {len(scores.cumulative)} schemes: r = {final:.4f}; best single scheme {best}: "
            f"r = {scores.alone[best]:.4f}; gain {final - scores.alone[best]:+.4f}."
        )
    subjects = sorted({subject for per in scores.per_subject.values() for subject in per})
    added = dict(scores.cumulative)
    rows = [
        [name, r, *(scores.per_subject[name].get(subject) for subject in subjects), added.get(name)]
        for name, r in scores.alone.items()
    ]
    page.table(["scheme", "val2 r", *subjects, "ensemble r after adding it"], rows)


def _ensemble_section(page: Page, ensemble: Path, out: Path) -> None:
    path = ensemble / SCORES_FILE
    if path.is_file():
        _schemes(page, read_scheme_scores(path), out)
    else:
        page.text(f"No {SCORES_FILE} in {ensemble}: no validation scores of the schemes.", note=True)
    manifest = ensemble / MANIFEST_FILE
    if manifest.is_file():
        page.details(f"{MANIFEST_FILE} (the ensemble's manifest)", json.dumps(_read_json(manifest), indent=2))


def _dataset_dir(inputs: ReportInputs) -> Path | None:
    """--data, else the DATASET.DIR that every job of the grid shares."""
    if inputs.data is not None:
        return inputs.data
    dirs = {job["params"].get("DATASET.DIR") for job in inputs.jobs} - {None}
    return Path(dirs.pop()) if len(dirs) == 1 else None


def _surface(page: Page, inputs: ReportInputs, scores: list[SubjectScores]) -> None:
    """The voxel-wise score on fsaverage5; a note instead where the prepared data cannot place the vertices."""
    from jobs.eval.surface import challenge_vertices, fsaverage5_mean, surface_figure

    data = _dataset_dir(inputs)
    if data is None:
        page.text("No surface map: pass --data (the prepared data) for the vertex ids.", note=True)
        return
    try:
        pairs = [
            (challenge_vertices(data, s.subject, {hemi: s.hemis[hemi].size for hemi in HEMIS}), s.hemis) for s in scores
        ]
    except UserError as exc:
        page.text(f"No surface map: {exc.line().removeprefix('error: ')}", note=True)
        return
    page.image(
        save(surface_figure(fsaverage5_mean(pairs)), inputs.out / SURFACE).name, "voxel-wise test score on fsaverage5"
    )
    page.text(
        f"Challenge vertices with fsaverage ids below 10,242 (the fsaverage5 vertices) of {data}, "
        "averaged over subjects; see jobs/eval/surface.py."
    )


def _score_section(page: Page, inputs: ReportInputs) -> None:
    page.heading("Test score (Algonauts 2023, noise-normalised)")
    if inputs.truth is None or inputs.ensemble is None:
        page.text("Needs --ensemble (the submission) and --truth (jobs/data/TRUTH.md).", note=True)
        return
    scores = score_dirs(inputs.ensemble, inputs.truth)
    result = scores_json(scores)
    page.image(save(score_figure(result), inputs.out / SCORES).name, "test score per subject and ROI")
    rows = [
        [name, e["all"]["n"], e["all"]["median"], e["all"]["mean"], e["lh"]["median"], e["rh"]["median"]]
        for name, e in result["subjects"].items()
    ]
    rows.append(["all", result["all"]["n"], result["all"]["median"], result["all"]["mean"], None, None])
    page.table(["subject", "vertices", "median", "mean", "lh median", "rh median"], rows)
    if result["rois"]:
        page.table(
            ["stream ROI", "vertices", "median", "mean"],
            [[name, e["n"], e["median"], e["mean"]] for name, e in result["rois"].items()],
        )
    _surface(page, inputs, scores)


def build_report(inputs: ReportInputs) -> Path:
    """Write the report into ``inputs.out``; returns the page's path."""
    import matplotlib

    matplotlib.use("Agg")
    if inputs.ensemble is not None and not inputs.ensemble.is_dir():
        raise UserError("no such ensemble output directory", where=str(inputs.ensemble))
    inputs.out.mkdir(parents=True, exist_ok=True)
    for name in (CURVES, SCHEMES, SCORES, SURFACE):
        (inputs.out / name).unlink(missing_ok=True)
    page = Page(f"memq report: grid {inputs.grid}")
    page.text(f"{_states(inputs.jobs)}. Root {inputs.root}.")
    _curves_section(page, inputs)
    page.heading("Ensemble (validation, val2)")
    if inputs.ensemble is None:
        page.text("No --ensemble given.", note=True)
    else:
        _ensemble_section(page, inputs.ensemble, inputs.out)
    _score_section(page, inputs)
    _jobs_section(page, inputs.jobs)
    path = inputs.out / PAGE
    tmp = path.with_name(f".{PAGE}.tmp")
    tmp.write_text(page.html())
    tmp.replace(path)
    return path
