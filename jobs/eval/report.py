"""`memq report`: one HTML page on a grid's jobs, its ensemble and, given a test truth, its score.

Files in the output directory, always under these names:

    index.html    the page: inline CSS, no scripts, nothing fetched; it references the PNGs beside it
    (the page)    for a grid with groups of the Mem README's ablation table (grids/whole-brain.yaml):
                  the measured rows next to the paper's (jobs/eval/ablation.py); `memq report` prints it too
    curves.png    validation r per epoch of every job with CSV logs, one panel per group (jobs/eval/logs.py)
    schemes.png   from ENSEMBLE/scores.json: each scheme alone, and the ensemble as schemes are added
                  (val2 r minus the best single scheme's; jobs/eval/plots.py)
    scores.png    with --truth: the test score of the submission in ENSEMBLE per subject and stream ROI
                  (minus the score over all vertices; the tables give the scores themselves)
    surface.png   with --truth: the voxel-wise test score on fsaverage5, averaged over subjects
                  (jobs/eval/surface.py; vertex ids from the prepared data, --data or the jobs' DATASET.DIR)
    replay.png    for a memory-replay grid (jobs that set EXPERIMENTAL.T_IMAGE with ABLATION.MEMORY_IMAGES
    replay.json   off, grids/replay.yaml): best val r over the frame T per subject and their mean,
                  and the plotted values (jobs/eval/replay.py)

The page opens with where the data came from: synthetic or measured, and the best achievable score
(jobs/eval/origin.py). A section whose inputs are missing says so on the page instead. Paths on the
page are never absolute: inside the memq root as ROOT-NAME/..., elsewhere by their name. PNGs of an
earlier report that this one does not draw are removed; index.html is written last (temporary name,
then rename).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.data.layout import DEFAULT_SPACE
from jobs.data.truth import HEMIS, HINT, synthetic_mark
from jobs.eval.ablation import HEADER, NOTE, table_rows
from jobs.eval.formats import count_text, r_change_text, r_text, score_text
from jobs.eval.logs import val_curve
from jobs.eval.origin import data_text, read_prepared, truth_text
from jobs.eval.page import Page
from jobs.eval.plots import Curve, curves_figure, save, schemes_figure, score_figure
from jobs.eval.replay import replay_curve, replay_figure
from jobs.eval.score import SubjectScores, score_dirs, scores_json
from memq.job import UserError

PAGE = "index.html"
CURVES, SCHEMES, SCORES, SURFACE = "curves.png", "schemes.png", "scores.png", "surface.png"
REPLAY, REPLAY_DATA = "replay.png", "replay.json"
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

    def shown(self, path: Path) -> str:
        """``path`` as the page shows it: ROOT-NAME/... inside the memq root, else its name alone."""
        path, root = path.resolve(), self.root.resolve()
        return str(root.name / path.relative_to(root)) if path.is_relative_to(root) else path.name

    def problem(self, exc: UserError) -> str:
        """A UserError's message with its place as :meth:`shown` shows it."""
        where = f"{self.shown(Path(exc.where))}: " if exc.where else ""
        return f"{where}{exc.what}"


def job_model(job: dict[str, Any]) -> str:
    """What the job models: its ROIs, or the whole brain; and which repeat."""
    rois = job["params"].get("DATASET.ROIS")
    if not rois:
        return f"whole brain (repeat {job['repeat']})"
    names = f"ROI{'s' if len(rois) > 1 else ''} {', '.join(map(str, rois))}"
    return f"{names} (repeat {job['repeat']})" if job["repeat"] else names


def job_label(job: dict[str, Any]) -> str:
    return f"job {job['id']}: {job_model(job)}"


def _states(jobs: list[dict[str, Any]]) -> str:
    states = Counter(job["state"] for job in jobs)
    return f"{count_text(len(jobs))} jobs: " + ", ".join(f"{count_text(n)} {s}" for s, n in sorted(states.items()))


def _jobs_section(page: Page, jobs: list[dict[str, Any]]) -> None:
    page.heading("Jobs")
    rows = [
        [str(job["id"]), job["group"], job_model(job), job["state"], job["attempt"],
         r_text((job["metrics"] or {}).get("val_pearson")), (job["metrics"] or {}).get("epochs")]
        for job in jobs
    ]  # fmt: skip
    page.table(["id", "group", "model", "state", "attempt", "val r", "epochs"], rows)


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
        page.text(
            f"No CSV logs with validation r for {count_text(len(unlogged))} jobs: {'; '.join(unlogged)}.", note=True
        )


def _replay_section(page: Page, inputs: ReportInputs) -> None:
    """The replay curve, its values as JSON beside it and as a table; nothing for other grids."""
    curve = replay_curve(inputs.jobs)
    if curve is None:
        return
    page.heading("Memory replay")
    page.image(save(replay_figure(curve), inputs.out / REPLAY).name, "best val r of each frame's model")
    summary = curve.as_json()
    (inputs.out / REPLAY_DATA).write_text(json.dumps(summary, indent=2) + "\n")
    every = {**curve.all_frames, "mean": summary["all_frames_mean"]}
    shuffled = {**curve.shuffled, "mean": summary["shuffled_mean"]}
    rows = [
        [name, *map(r_text, values), r_text(every.get(name)), r_text(shuffled.get(name))]
        for name, values in {**curve.subjects, "mean": curve.mean}.items()
    ]
    page.table(["subject", *(f"T={t}" for t in curve.frames), "every frame", "shuffled"], rows)
    page.text(f"Each model saw only the frame T trial slots back; values in {REPLAY_DATA}.")


def _ablation_section(page: Page, jobs: list[dict[str, Any]]) -> None:
    rows = table_rows(jobs)
    if rows is None:
        return
    page.heading("Ablation table (the Mem README's rows and this grid's)")
    page.text(NOTE)
    page.table(HEADER, rows)


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
    if not scores.alone:
        page.text(f"{SCORES_FILE} names no schemes.", note=True)
        return
    page.image(save(schemes_figure(scores.alone, scores.cumulative), out / SCHEMES).name, "val2 r of the schemes")
    if scores.cumulative:
        best = max(scores.alone, key=scores.alone.__getitem__)
        final = scores.cumulative[-1][1]
        page.text(
            f"Ensemble of {count_text(len(scores.cumulative))} schemes: r = {r_text(final)}; best single scheme "
            f"{best}: r = {r_text(scores.alone[best])}; gain {r_change_text(final - scores.alone[best])}."
        )
    subjects = sorted({subject for per in scores.per_subject.values() for subject in per})
    added = dict(scores.cumulative)
    rows = [
        [name, r_text(r), *(r_text(scores.per_subject[name].get(subject)) for subject in subjects),
         r_text(added.get(name))]
        for name, r in scores.alone.items()
    ]  # fmt: skip
    page.table(["scheme", "val2 r", *subjects, "ensemble r after adding it"], rows)


def _ensemble_section(page: Page, inputs: ReportInputs, ensemble: Path) -> None:
    path = ensemble / SCORES_FILE
    if path.is_file():
        _schemes(page, read_scheme_scores(path), inputs.out)
    else:
        page.text(f"No {SCORES_FILE} in {inputs.shown(ensemble)}: no validation scores of the schemes.", note=True)
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
        page.text(f"No surface map: {inputs.problem(exc)}", note=True)
        return
    page.image(
        save(surface_figure(fsaverage5_mean(pairs)), inputs.out / SURFACE).name, "voxel-wise test score on fsaverage5"
    )
    page.text(
        f"Challenge vertices with fsaverage ids below 10,242 (the fsaverage5 vertices) of {inputs.shown(data)}, "
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
        [name, e["all"]["n"], score_text(e["all"]["median"]), score_text(e["all"]["mean"]),
         score_text(e["lh"]["median"]), score_text(e["rh"]["median"])]
        for name, e in result["subjects"].items()
    ]  # fmt: skip
    overall = result["all"]
    rows.append(["all", overall["n"], score_text(overall["median"]), score_text(overall["mean"]), None, None])
    page.table(["subject", "vertices", "median", "mean", "lh median", "rh median"], rows)
    if result["rois"]:
        page.table(
            ["stream ROI", "vertices", "median", "mean"],
            [[name, e["n"], score_text(e["median"]), score_text(e["mean"])] for name, e in result["rois"].items()],
        )
    _surface(page, inputs, scores)


def _origin(inputs: ReportInputs) -> tuple[bool, list[str]]:
    """Whether the prepared data or the test truth is synthetic, and the page's lines on where they came from."""
    synthetic, lines = False, []
    data = _dataset_dir(inputs)
    if data is None:
        lines.append(
            "Prepared data not known (the jobs share no DATASET.DIR; pass --data), nor whether it is synthetic."
        )
    else:
        spaces = {job["params"].get("DATASET.FMRI_SPACE", DEFAULT_SPACE) for job in inputs.jobs}
        try:
            prepared = read_prepared(data, spaces.pop() if len(spaces) == 1 else DEFAULT_SPACE)
        except UserError as exc:
            lines.append(f"Prepared data not readable ({inputs.problem(exc)}): whether it is synthetic is not known.")
        else:
            synthetic = prepared.synthetic
            lines.append(data_text(prepared, inputs.shown(data)))
    if inputs.truth is not None:
        mark = synthetic_mark(inputs.truth)
        synthetic |= mark is not None
        lines.append(truth_text(mark, inputs.shown(inputs.truth)))
    return synthetic, lines


def build_report(inputs: ReportInputs) -> Path:
    """Write the report into ``inputs.out``; returns the page's path."""
    import matplotlib

    matplotlib.use("Agg")
    if inputs.ensemble is not None and not inputs.ensemble.is_dir():
        raise UserError("no such ensemble output directory", where=str(inputs.ensemble))
    if inputs.truth is not None and not inputs.truth.is_dir():
        raise UserError("no such truth directory", where=str(inputs.truth), hint=HINT)
    inputs.out.mkdir(parents=True, exist_ok=True)
    for name in (CURVES, SCHEMES, SCORES, SURFACE, REPLAY, REPLAY_DATA):
        (inputs.out / name).unlink(missing_ok=True)
    synthetic, origin = _origin(inputs)
    page = Page(f"memq report: grid {inputs.grid}{' (synthetic data)' if synthetic else ''}")
    page.text(f"{_states(inputs.jobs)}. Root {inputs.shown(inputs.root)}.")
    for line in origin:
        page.origin(line)
    _curves_section(page, inputs)
    _replay_section(page, inputs)
    _ablation_section(page, inputs.jobs)
    page.heading("Ensemble (validation, val2)")
    if inputs.ensemble is None:
        page.text("No --ensemble given.", note=True)
    else:
        _ensemble_section(page, inputs, inputs.ensemble)
    _score_section(page, inputs)
    _jobs_section(page, inputs.jobs)
    path = inputs.out / PAGE
    tmp = path.with_name(f".{PAGE}.tmp")
    tmp.write_text(page.html())
    tmp.replace(path)
    return path
