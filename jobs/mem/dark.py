"""Distillation (LOSS.DARK): the blend schedule, and the teacher-prediction store it reads.

The reference (plmodels.PlVEModel.training_step, darkness_weight / gt_weight) trains a student on
two per-voxel losses at once, ``gt_weight * loss(pred, target) + darkness_weight * loss(pred,
teacher)``, with ``gt_weight = min(epoch / MAX_EPOCH, 1)`` and ``darkness_weight = max(1 - epoch /
MAX_EPOCH, 0)``: the teacher alone at epoch 0, the target alone from MAX_EPOCH (100) on. A
teacher row that is all zeros (the reference's placeholder for a missing file) is replaced by the
target. mem-spec 3.3 (last item); jobs/mem/COMPAT.md "Distillation".

The store is ``DIR/dark/<name>/<split>/`` (jobs/data/FORMAT.md): a copy of a ``mem.predict``
output directory, published by :func:`publish` and read, verified, by :class:`TeacherRows`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jobs.data.dark import DARK_MANIFEST, TEACHER_SPLIT, dark_dir, missing_teacher
from jobs.mem.ensemble.artifacts import MANIFEST, SubjectPrediction, read_manifest, read_predictions, verified
from memq.job import ChecksumError, sha256_file, write_atomically, write_text_atomically

assert DARK_MANIFEST == MANIFEST  # the store's directories are prediction directories


def dark_weights(epoch: int, max_epoch: int) -> tuple[float, float]:
    """(target weight, teacher weight) of the loss at ``epoch`` (0-based, as Lightning counts)."""
    return min(epoch / max_epoch, 1.0), max(1.0 - epoch / max_epoch, 0.0)


def publish(source: Path, data_dir: str | Path, name: str, split: str) -> Path:
    """Copy the finished prediction directory ``source`` to ``DIR/dark/<name>/<split>/``, each file
    verified and published atomically, the manifest last. Kept if already there and intact."""
    manifest = read_manifest(source)
    if manifest is None or not verified(source, manifest):
        raise ChecksumError(f"{source}: not a finished, intact prediction directory")
    target = dark_dir(data_dir, name, split)
    if read_manifest(target) == manifest and verified(target, manifest):
        return target
    target.mkdir(parents=True, exist_ok=True)
    (target / MANIFEST).unlink(missing_ok=True)  # the files below are about to change
    for entry in [manifest["index"], *manifest["subjects"].values()]:
        write_atomically(target / entry["file"], lambda tmp, f=entry["file"]: shutil.copyfile(source / f, tmp))
    if not verified(target, manifest):
        raise ChecksumError(f"{target}: copies do not match {source / MANIFEST}")
    write_text_atomically(target / MANIFEST, (source / MANIFEST).read_text())
    return target


def read_teacher(data_dir: str | Path, name: str) -> dict[str, SubjectPrediction]:
    """The teacher ``name``'s train-split predictions per subject; every file's sha256 checked."""
    problem = missing_teacher(data_dir, name)
    if problem is not None:
        raise FileNotFoundError(problem)
    parts = {p.subject: p for p in read_predictions(dark_dir(data_dir, name, TEACHER_SPLIT))}
    for part in parts.values():
        if part.path.stat().st_size != part.size or sha256_file(part.path) != part.sha256:
            raise ChecksumError(f"{part.path}: does not match its manifest")
    return parts


@dataclass
class TeacherRows:
    """One subject's teacher predictions for given trials and voxel positions, read row by row
    from the verified file (memory-mapped: the train split of a real subject is ~18 GB)."""

    path: Path
    rows: np.ndarray  # per dataset item: row of the file
    columns: np.ndarray | slice  # the student's voxels among the file's columns

    @classmethod
    def select(cls, part: SubjectPrediction, trials: np.ndarray, voxels: np.ndarray | None) -> TeacherRows:
        """``trials`` (global trial indices) x ``voxels`` (positions; None: every voxel, in order)."""
        rows = _positions(part.trials, trials, f"{part.path}: no teacher prediction for trials")
        if voxels is None and np.array_equal(part.voxels, np.arange(len(part.voxels))):
            return cls(part.path, rows, slice(None))
        wanted = np.arange(len(part.voxels)) if voxels is None else voxels
        return cls(part.path, rows, _positions(part.voxels, wanted, f"{part.path}: the teacher lacks voxels"))

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "_values"}

    def row(self, i: int) -> np.ndarray:
        """float32 teacher prediction of dataset item ``i``."""
        values = self.__dict__.get("_values")
        if values is None:
            values = self.__dict__["_values"] = np.load(self.path, mmap_mode="r")
        return np.asarray(values[self.rows[i]][self.columns], dtype=np.float32)


def _positions(available: np.ndarray, wanted: np.ndarray, what: str) -> np.ndarray:
    """Positions in ``available`` of each of ``wanted``; ValueError naming a few that are absent."""
    order = np.argsort(available, kind="stable")
    at = np.searchsorted(available, wanted, sorter=order).clip(max=len(available) - 1)
    found = order[at]
    absent = wanted[available[found] != wanted]
    if absent.size:
        raise ValueError(f"{what} {absent[:5].tolist()}{' ...' if absent.size > 5 else ''} ({absent.size} in all)")
    return found
