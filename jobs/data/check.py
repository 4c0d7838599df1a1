"""`memq data check`: validate a prepared directory and say what is wrong in it.

Beyond the format checks of ``layout``: no NaNs, betas z-scored per session, memory windows
consistent with the trial order, every memory image stored, splits disjoint by image and
covering the trials, and each atlas's ROIs partitioning the voxels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jobs.data.layout import (
    BEHAVIOR_DIM,
    BLANK,
    FEATURES_PENDING,
    FEATURES_SOURCE,
    FILL_ROW,
    IMAGES_FILE,
    N_SLOTS,
    STREAM_ROIS,
    TRIALS_PER_SESSION,
    LayoutError,
    SubjectFile,
    open_images,
    open_subject,
    subject_files,
)
from jobs.data.memory import prev_behavior_rows
from jobs.data.progress import Reporter
from memq.job import UserError

Z_MEAN_TOL = 0.05  # float16 storage leaves |mean| well below this
Z_STD_TOL = 0.05
ATLASES = {"A": list(STREAM_ROIS), "W": [f"w_{i}" for i in range(1, 10)]}
ATLASES |= {f"R{j}": [f"r_{j}_{i}" for i in range(1, 10)] for j in range(1, 11)}


@dataclass
class FileReport:
    name: str
    problems: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)


def _images(path: Path) -> tuple[FileReport, np.ndarray | None]:
    report = FileReport(path.name)
    try:
        with open_images(path) as f:
            ids, source = f.ids, str(f.file.attrs.get(FEATURES_SOURCE, "not recorded"))
            features = f.features[()]
            size = f"{f.image_size}x{f.image_size}"
            report.facts.append(f"{ids.size} images {size}, {f.feature_dim}-d features ({source})")
    except LayoutError as exc:
        report.problems.append(exc.what)
        return report, None
    if source == FEATURES_PENDING:
        report.problems.append("memory features not computed yet (run `memq data cache-features`)")
    if not np.isfinite(features).all():
        report.problems.append("features hold NaN or inf")
    return report, ids


def _check_betas(f: SubjectFile, report: FileReport, reporter: Reporter) -> None:
    worst_mean, worst_std = 0.0, 0.0
    with reporter.task(f"{f.path.name} betas", f.n_beta_trials // TRIALS_PER_SESSION) as advance:
        for start in range(0, f.n_beta_trials, TRIALS_PER_SESSION):
            block = f.betas[start : start + TRIALS_PER_SESSION].astype(np.float32)
            if not np.isfinite(block).all():
                report.problems.append(f"betas of session {start // TRIALS_PER_SESSION + 1} hold NaN or inf")
                return
            std = block.std(axis=0)
            worst_mean = max(worst_mean, float(np.abs(block.mean(axis=0)).max()))
            worst_std = max(worst_std, float(np.abs(std[std > 0] - 1).max(initial=0)))
            advance(1)
    if worst_mean > Z_MEAN_TOL or worst_std > Z_STD_TOL:
        report.problems.append(
            f"betas are not z-scored per session and voxel "
            f"(|mean| up to {worst_mean:.3f}, |std - 1| up to {worst_std:.3f})"
        )


def _check_splits(f: SubjectFile, current: np.ndarray, report: FileReport) -> None:
    splits = {name: f.split(name) for name in ("train", "val1", "val2", "predict")}
    fit = np.sort(np.concatenate([splits[n] for n in ("train", "val1", "val2")]))
    if not np.array_equal(fit, np.arange(f.n_beta_trials)):
        report.problems.append("train, val1 and val2 do not hold every trial with betas exactly once")
    if not np.array_equal(splits["predict"], np.arange(f.n_beta_trials, f.n_trials)):
        report.problems.append("predict is not exactly the trials without betas")
    names = ("train", "val1", "val2")
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = np.intersect1d(current[splits[a]], current[splits[b]])
            if shared.size:
                report.problems.append(f"splits {a} and {b} share {shared.size} images")
    report.facts.append("splits " + " / ".join(f"{n} {splits[n].size}" for n in splits) + " trials")
    images = f.challenge_images()
    if images is not None and not np.isin(images, current[splits["predict"]]).all():
        report.problems.append("challenge_images holds images not shown in the predict split")


def _check_rois(f: SubjectFile, report: FileReport) -> None:
    names = set(f.roi_names())
    present = []
    for atlas, members in ATLASES.items():
        have = [n for n in members if n in names]
        if not have:
            continue
        present.append(atlas)
        if len(have) < len(members):
            report.problems.append(f"atlas {atlas} lacks ROIs {', '.join(sorted(set(members) - set(have)))}")
            continue
        positions = np.sort(np.concatenate([f.roi(n) for n in members]))
        if not np.array_equal(positions, np.arange(f.n_voxels)):
            report.problems.append(f"the ROIs of atlas {atlas} do not partition the {f.n_voxels} voxels")
    others = sorted(names - {n for members in ATLASES.values() for n in members})
    extra = f", other ROIs {', '.join(others)}" if others else ""
    report.facts.append(f"atlases {', '.join(present) or 'none'}{extra}")


def _subject(path: Path, image_ids: np.ndarray | None, reporter: Reporter) -> FileReport:
    report = FileReport(path.name)
    try:
        f = open_subject(path)
    except LayoutError as exc:
        report.problems.append(exc.what)
        return report
    with f:
        n_sessions = f.n_sessions
        report.facts.append(
            f"{n_sessions} sessions ({f.n_beta_trials // TRIALS_PER_SESSION} with betas), {f.n_voxels} voxels"
        )
        behavior, memory_index = f.behavior(), f.memory_index()
        if not np.isfinite(behavior).all():
            report.problems.append("behavior holds NaN or inf")
        if behavior.shape[1] != BEHAVIOR_DIM or not np.allclose(behavior[-1], FILL_ROW):
            report.problems.append("the last behavior row is not the fill row")
        if not np.isfinite(f.coords()).all():
            report.problems.append("coords hold NaN or inf")
        if np.unique(f.voxel_indices()).size != f.n_voxels:
            report.problems.append("voxel_indices repeats a voxel")
        current = memory_index[:, N_SLOTS - 1]
        if np.any(current == BLANK):
            report.problems.append("a trial has a blank T=0 slot")
        else:
            try:
                prev_behavior_rows(memory_index)
            except ValueError as exc:
                report.problems.append(str(exc))
        if image_ids is not None:
            shown = np.unique(memory_index)
            missing = np.setdiff1d(shown[shown != BLANK], image_ids)
            if missing.size:
                report.problems.append(f"{missing.size} memory images are not in {IMAGES_FILE}")
        _check_splits(f, current, report)
        _check_rois(f, report)
        _check_betas(f, report, reporter)
    return report


def check_dir(data_dir: Path, reporter: Reporter | None = None) -> list[FileReport]:
    """One report per file of the prepared directory (images first, then subjects)."""
    reporter = reporter or Reporter()
    if not data_dir.is_dir():
        raise UserError("no such directory", where=str(data_dir))
    images = FileReport(IMAGES_FILE, problems=["missing"])
    image_ids = None
    if (data_dir / IMAGES_FILE).exists():
        images, image_ids = _images(data_dir / IMAGES_FILE)
    subjects = [_subject(path, image_ids, reporter) for path in subject_files(data_dir)]
    if not subjects:
        subjects = [FileReport("subjXX.h5", problems=["no subject file"])]
    leftovers = sorted(p.name for p in data_dir.glob(".*.tmp"))
    if leftovers:
        images.facts.append(f"unfinished files of killed writers (delete when nothing runs): {', '.join(leftovers)}")
    return [images, *subjects]
