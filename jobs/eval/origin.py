"""The report's first lines: whether its data is synthetic, and the best score it allows.

Synthetic data says so itself (``memq data synth``): its prepared subjects have space "synthetic"
and ``synth_*`` attributes, among them the mean best achievable validation r of the subject
(``jobs/data/FORMAT.md``); its test truth holds a ``synthetic.json`` (``jobs/data/TRUTH.md``).
Data without these marks is measured and never called synthetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.data.layout import DEFAULT_SPACE, list_subjects, open_subject, subject_path
from jobs.eval.formats import count_text, r_text
from memq.job import UserError

SYNTHETIC_SPACE = "synthetic"
CEILING_ATTR = "synth_r_ceiling_mean"


@dataclass(frozen=True)
class PreparedSubject:
    space: str
    n_voxels: int
    r_ceiling: float | None  # synthetic data: mean over the voxels of the best achievable validation r


@dataclass(frozen=True)
class PreparedData:
    subjects: list[PreparedSubject]

    @property
    def synthetic(self) -> bool:
        return any(s.space == SYNTHETIC_SPACE for s in self.subjects)

    @property
    def n_voxels(self) -> int:
        return sum(s.n_voxels for s in self.subjects)

    @property
    def r_ceiling(self) -> float | None:
        """Best achievable r pooled over every voxel of every subject (as the validation r pools them)."""
        known = [(s.r_ceiling, s.n_voxels) for s in self.subjects if s.r_ceiling is not None]
        if len(known) < len(self.subjects):
            return None
        return sum(r * n for r, n in known) / self.n_voxels


def read_prepared(data_dir: Path, space: str = DEFAULT_SPACE) -> PreparedData:
    """Space, size and recorded ceiling of each subject file of ``space`` (``subjXX.h5`` for
    fsaverage, ``subjXX.SPACE.h5`` else); a UserError where there are none."""
    subjects = []
    for name in list_subjects(data_dir, space):
        with open_subject(subject_path(data_dir, name, space)) as f:
            ceiling = f.file.attrs.get(CEILING_ATTR)
            subjects.append(PreparedSubject(f.space, f.n_voxels, None if ceiling is None else float(ceiling)))
    if not subjects:
        files = subject_path("", "subjXX", space).name
        raise UserError(f"no {files} files", where=str(data_dir), hint="see jobs/data/FORMAT.md")
    return PreparedData(subjects)


def data_text(data: PreparedData, name: str) -> str:
    """What the page says of the prepared data ``name``: synthetic or measured, and the validation ceiling."""
    what = f"{name}: {count_text(len(data.subjects))} subjects, {count_text(data.n_voxels)} voxels"
    if not data.synthetic:
        spaces = ", ".join(sorted({s.space for s in data.subjects}))
        return (
            f"Measured data: the prepared data ({what}, space {spaces}). Validation r is a plain Pearson r "
            "against single-trial betas, not normalised; its best achievable value is not known."
        )
    if data.r_ceiling is None:
        ceiling = f"Its best achievable validation r is not recorded (no {CEILING_ATTR} attribute)."
    else:
        ceiling = (
            f"Best achievable validation r: {r_text(data.r_ceiling)} (the planted signal's r against single-trial "
            "betas, pooled over every voxel of every subject as a whole-brain model's val r and the schemes' val2 r "
            "are; models of fewer voxels have their own ceilings)."
        )
    return f"Synthetic data, not measured: the prepared data ({what}) was made by memq data synth. {ceiling}"


def truth_text(mark: dict[str, Any] | None, name: str) -> str:
    """What the page says of the test truth ``name`` (``mark``: its synthetic.json, None if measured)."""
    score = "Test scores are % of each vertex's noise ceiling (r² / NC, capped at 100%)"
    if mark is None:
        return f"Measured test truth ({name}). {score}; NC comes from the truth's ncsnr: 100% is the noise ceiling."
    made_by = str(mark.get("generator", "a generator"))
    settings = ", ".join(f"{key} {value}" for key, value in mark.items() if key != "generator")
    return (
        f"Synthetic test truth, not measured: the test truth ({name}) was made by {made_by}"
        f"{f' ({settings})' if settings else ''}. {score}; a synthetic noise ceiling is exact (ncsnr = planted "
        "signal std / noise), so the best achievable score is 100%, which the planted signal reaches up to "
        "sampling noise."
    )
