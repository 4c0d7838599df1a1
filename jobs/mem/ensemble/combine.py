"""Job kind ``mem.ensemble``: stitch each scheme's ROI models into whole-brain predictions, average
the schemes with equal weights, write the Algonauts 2023 submission and the val2 scores.

Subject by subject, each scheme's model files are streamed, stitched block by block
(jobs/mem/ensemble/stitch.py) and added straight into one float32 [n_trials, N_s] sum scaled by 1/n_schemes
(memory: one whole-brain prediction, whatever the number of models). Before any of that, every
scheme must cover every voxel of every subject exactly once (with ``partial``, schemes that do
not are left out and listed). Files in ``out``:

    subjXX/lh_pred_test.npy, rh_pred_test.npy   float32 [n_test, n_lh | n_rh] (mem-spec 4.4)
    scores.json     val2 mean per-voxel r of each scheme alone and of the running average as the
                    schemes are added in order: {"per_scheme": {name: {"mean", "per_subject"}},
                    "cumulative": [{"schemes": [...], "mean", "per_subject"}]}; "mean" pools every
                    voxel of every subject, as the validation metric does
    ensemble.json   the manifest, written last: grid, recipe, split, score_split, subjects,
                    schemes -> job ids, skipped (with ``partial``: scheme -> why it was left out)

Every output is rewritten on every run, atomically and deterministically (fixed orders, float32).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jobs.data.layout import N_SLOTS, open_subject, subject_path
from jobs.eval.report import MANIFEST_FILE, SCORES_FILE
from jobs.eval.score import pearson
from jobs.kinds import TRAINED_KINDS
from jobs.mem.ensemble.artifacts import SubjectPrediction, read_predictions, remove_temporaries
from jobs.mem.ensemble.challenge import submission, write_submission
from jobs.mem.ensemble.schemes import schemes as find_schemes
from jobs.mem.ensemble.schemes import select
from jobs.mem.ensemble.source import stage_params
from jobs.mem.ensemble.stage_params import SCORE_SPLIT, SUBMISSION_SPLIT, EnsembleParams
from jobs.mem.ensemble.stitch import coverage, scheme_blocks
from memq.job import JobContext, PermanentError, prediction_dir, write_text_atomically

SPLITS = (SUBMISSION_SPLIT, SCORE_SPLIT)
Parts = dict[str, dict[int, dict[str, SubjectPrediction]]]  # split -> job -> subject -> its predictions


@dataclass
class Subject:
    name: str
    n_voxels: int
    trials: dict[str, np.ndarray]  # split -> trials


@dataclass
class Scores:
    """Sums of per-voxel r, for means per subject and pooled over subjects."""

    per_subject: dict[str, float] = field(default_factory=dict)
    r_sum: float = 0.0
    n: int = 0

    def add(self, subject: str, r: np.ndarray) -> None:
        self.per_subject[subject] = float(np.mean(r, dtype=np.float64))
        self.r_sum += float(np.sum(r, dtype=np.float64))
        self.n += r.size

    def json(self) -> dict[str, Any]:
        return {"mean": self.r_sum / self.n, "per_subject": self.per_subject}


def _jobs(ctx: JobContext, ids: Sequence[int]) -> list[dict[str, Any]]:
    rows = ctx.jobs(ids=ids)
    missing = sorted(set(ids) - {row["id"] for row in rows})
    unfinished = [f"{row['id']} ({row['state']})" for row in rows if row["state"] != "succeeded"]
    if missing or unfinished:
        raise PermanentError(f"trained jobs missing {missing} or not succeeded {unfinished}")
    return rows


def _trained_in_grid(grid_jobs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A pipeline's trained jobs: its succeeded jobs of a kind that makes ROI models."""
    return [job for job in grid_jobs if job["kind"] in TRAINED_KINDS and job["state"] == "succeeded"]


def _data_dir(jobs: Sequence[dict[str, Any]]) -> Path:
    dirs = {job["params"].get("DATASET.DIR") for job in jobs}
    if len(dirs) != 1 or None in dirs:
        raise PermanentError(f"the trained jobs must share one DATASET.DIR, found {sorted(map(str, dirs))}")
    return Path(dirs.pop())


def _parts(root: Path, grid: str, recipe: str, job_ids: Sequence[int]) -> Parts:
    parts: Parts = {}
    for split in SPLITS:
        parts[split] = {}
        for job in job_ids:
            directory = prediction_dir(root, grid, job, recipe, split)
            try:
                parts[split][job] = {p.subject: p for p in read_predictions(directory)}
            except FileNotFoundError as exc:
                raise PermanentError(f"{exc}; ensemble.predict.splits must list {', '.join(SPLITS)}") from None
    return parts


def _subjects(data_dir: Path, parts: Parts) -> list[Subject]:
    names = sorted({s for by_job in parts[SUBMISSION_SPLIT].values() for s in by_job})
    subjects = []
    for name in names:
        with open_subject(subject_path(data_dir, name)) as f:
            subjects.append(Subject(name, f.n_voxels, {split: f.split(split) for split in SPLITS}))
    return subjects


def _models(subject: Subject, split: str, job_ids: Sequence[int], parts: Parts) -> list[SubjectPrediction]:
    """A scheme's models of one subject (a model of an ROI without voxels there has none)."""
    return [parts[split][job][subject.name] for job in job_ids if subject.name in parts[split][job]]


def _problem(job_ids: Sequence[int], parts: Parts, subjects: Sequence[Subject]) -> str | None:
    """Why a scheme cannot be stitched (voxels not covered exactly once, other trials), or None."""
    for subject in subjects:
        for split in SPLITS:
            models = _models(subject, split, job_ids, parts)
            wrong = [p.path for p in models if not np.array_equal(p.trials, subject.trials[split])]
            if wrong:
                return f"{wrong[0]} does not hold the {split} trials of {subject.name}"
            problem = coverage([p.voxels for p in models], subject.n_voxels)
            if problem:
                return f"{subject.name} {split}: {problem}"
    return None


def _score_subject(subject: Subject, data_dir: Path, schemes: Mapping[str, list[int]], parts: Parts,
                   alone: dict[str, Scores], cumulative: list[Scores]) -> None:
    """val2 r of each scheme's stitched prediction and of the running sum of them."""
    with open_subject(subject_path(data_dir, subject.name)) as f:
        targets = f.betas[subject.trials[SCORE_SPLIT]].astype(np.float32)
    total = np.zeros_like(targets)
    stitched = np.empty_like(targets)
    for k, (name, job_ids) in enumerate(schemes.items()):
        for start, block in scheme_blocks(_models(subject, SCORE_SPLIT, job_ids, parts), subject.n_voxels):
            stitched[start : start + len(block)] = block
        alone[name].add(subject.name, pearson(stitched, targets))
        total += stitched
        cumulative[k].add(subject.name, pearson(total, targets))  # r of the mean = r of the sum


def _submit_subject(subject: Subject, data_dir: Path, schemes: Mapping[str, list[int]], parts: Parts,
                    out: Path) -> None:
    with open_subject(subject_path(data_dir, subject.name)) as f:
        layout, order = f.challenge, f.challenge_images()
        images = f.memory_index()[subject.trials[SUBMISSION_SPLIT], N_SLOTS - 1]
    if layout is None or order is None:
        raise PermanentError(f"{subject.name}: the prepared data has no challenge layout or challenge_images")
    mean = np.zeros((len(images), subject.n_voxels), dtype=np.float32)
    scale = np.float32(1 / len(schemes))
    for job_ids in schemes.values():
        for start, block in scheme_blocks(_models(subject, SUBMISSION_SPLIT, job_ids, parts), subject.n_voxels):
            block *= scale
            mean[start : start + len(block)] += block
    try:
        write_submission(out, subject.name, submission(mean, images, order, layout))
    except ValueError as exc:
        raise PermanentError(f"{subject.name}: {exc}") from None


def run(ctx: JobContext) -> None:
    params = stage_params(EnsembleParams, ctx)
    out = Path(params.out)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # present again only once every file below is rewritten
    remove_temporaries(out)
    grid = params.grid or ctx.grid
    grid_jobs = ctx.jobs(grid=grid)
    jobs = _jobs(ctx, params.jobs) if params.jobs is not None else _trained_in_grid(grid_jobs)
    try:
        schemes = select(find_schemes(jobs, grid_jobs), params.schemes, partial=params.partial)
    except ValueError as exc:
        raise PermanentError(str(exc)) from None
    jobs = [job for job in jobs if any(job["id"] in ids for ids in schemes.values())]
    data_dir = _data_dir(jobs)
    parts = _parts(ctx.root, grid, params.recipe, [job for ids in schemes.values() for job in ids])
    subjects = _subjects(data_dir, parts)
    skipped = {name: "no succeeded jobs" for name in params.schemes or () if name not in schemes}  # partial
    skipped |= {name: problem for name, ids in schemes.items() if (problem := _problem(ids, parts, subjects))}
    if skipped and not params.partial:
        raise PermanentError("; ".join(f"scheme {name}: {problem}" for name, problem in skipped.items()))
    schemes = {name: ids for name, ids in schemes.items() if name not in skipped}
    if not schemes:
        raise PermanentError(f"no complete scheme to average: {skipped}")
    alone, cumulative = {name: Scores() for name in schemes}, [Scores() for _ in schemes]
    for i, subject in enumerate(subjects):
        ctx.report_progress(subject=subject.name, done=i, of=len(subjects))
        _score_subject(subject, data_dir, schemes, parts, alone, cumulative)
        _submit_subject(subject, data_dir, schemes, parts, out)
    names = list(schemes)
    scores = {
        "split": SCORE_SPLIT,
        "per_scheme": {name: alone[name].json() for name in names},
        "cumulative": [{"schemes": names[: k + 1], **c.json()} for k, c in enumerate(cumulative)],
    }
    write_text_atomically(out / SCORES_FILE, json.dumps(scores, indent=2) + "\n")
    manifest = {"grid": grid, "recipe": params.recipe, "split": SUBMISSION_SPLIT, "score_split": SCORE_SPLIT,
                "subjects": [s.name for s in subjects], "schemes": schemes, "skipped": skipped}
    write_text_atomically(out / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    final = scores["cumulative"][-1]["mean"]
    ctx.record_metrics(val2_pearson=final, schemes=len(schemes))
    print(f"ensemble of {len(schemes)} schemes, {len(subjects)} subjects: val2 r {final:.4f} -> {out}", flush=True)
