"""NSD's experimental design (``nsd_expdesign.mat``): which 73k image each subject saw in each trial slot.

Read with scipy (MATLAB v5) or h5py (v7.3). The file's indices are 1-based; everything returned
here is 0-based. Shapes are read from the file (40 sessions x 12 runs x 75 slots and 8 subjects
in NSD); only the 750 stimulus trials per session are fixed by the layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from jobs.data.inputs import integer_valued, reason, require_file
from jobs.data.layout import BLANK, TRIALS_PER_SESSION
from memq.job import UserError

N_IMAGES = 73_000
_SHAPES = {"masterordering": "1 x 30000", "subjectim": "8 x 10000", "stimpattern": "40 x 12 x 75"}


@dataclass(frozen=True)
class ExpDesign:
    path: Path
    masterordering: np.ndarray  # [n_trials] 0-based column of subjectim shown in each designed trial
    subjectim: np.ndarray  # [n_subjects, n_images] 0-based 73k ids
    stimpattern: np.ndarray  # bool [n_sessions, n_runs, n_slots]: a stimulus in this slot

    def row(self, subject: str) -> int:
        """Row of ``subjectim`` of ``subject`` ("subj03" -> 2)."""
        row = int(subject.removeprefix("subj")) - 1
        if row >= self.subjectim.shape[0]:
            raise UserError(
                f"subjectim has rows for {self.subjectim.shape[0]} subjects; {subject} has none", where=str(self.path)
            )
        return row

    def trial_images(self, subject: str) -> np.ndarray:
        """int64 [n_trials]: 73k id of every designed stimulus trial of ``subject``, in order."""
        return self.subjectim[self.row(subject), self.masterordering]

    def slots(self, subject: str) -> np.ndarray:
        """int64 [n_sessions, n_runs, n_slots]: 73k id per time-locked trial slot, BLANK if none."""
        slots = np.full(self.stimpattern.shape, BLANK, dtype=np.int64)
        slots[self.stimpattern] = self.trial_images(subject)
        return slots


def _load(path: Path) -> dict[str, np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
        return {k: np.asarray(mat[k]) for k in _SHAPES if k in mat}
    except NotImplementedError:  # MATLAB v7.3 files are HDF5, stored with the dimensions reversed
        with h5py.File(path, "r") as f:
            return {k: np.asarray(f[k][()]).T for k in _SHAPES if k in f}
    except (ValueError, TypeError, OSError) as exc:
        raise UserError(f"not a readable MATLAB file ({reason(exc)})", where=str(path)) from exc


def read_expdesign(path: Path) -> ExpDesign:
    require_file(path, "NSD experimental design", hint="nsddata/experiments/nsd/nsd_expdesign.mat of the NSD download")
    arrays = _load(path)
    for key, shape in _SHAPES.items():
        if key not in arrays:
            raise UserError(f"no variable {key!r} (expected {shape})", where=str(path))
    subjectim, stimpattern = arrays["subjectim"], arrays["stimpattern"]
    if subjectim.ndim != 2 or stimpattern.ndim != 3:
        raise UserError(
            f"subjectim is {list(subjectim.shape)} and stimpattern {list(stimpattern.shape)}; "
            f"expected {_SHAPES['subjectim']} and {_SHAPES['stimpattern']}",
            where=str(path),
        )
    subjectim = integer_valued(path, "subjectim", subjectim, 1, N_IMAGES) - 1
    masterordering = integer_valued(path, "masterordering", arrays["masterordering"].ravel(), 1, subjectim.shape[1]) - 1
    stimulus = integer_valued(path, "stimpattern", stimpattern, 0, 1).astype(bool)
    per_session = stimulus.sum(axis=(1, 2))
    if np.any(per_session != TRIALS_PER_SESSION) or per_session.sum() != masterordering.size:
        raise UserError(
            f"stimpattern has {per_session.tolist()} stimulus slots per session and masterordering "
            f"{masterordering.size} trials; expected {TRIALS_PER_SESSION} per session, one trial per slot",
            where=str(path),
        )
    return ExpDesign(path, masterordering, subjectim, stimulus)
