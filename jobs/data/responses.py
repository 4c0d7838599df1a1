"""NSD's behavioural responses (``nsddata/ppdata/subjXX/behav/responses.tsv``) as trial records.

A tab-separated table with a header row and one row per stimulus trial of every completed session,
in order; missing values are ``NaN``. The number of completed sessions is the row count / 750.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs.data.behavior import TrialRecords
from jobs.data.expdesign import N_IMAGES
from jobs.data.inputs import integer_valued, reason, require_file
from jobs.data.layout import TRIALS_PER_SESSION
from memq.job import UserError

# the columns used here, of SUBJECT SESSION RUN TRIAL 73KID 10KID TIME ISOLD ISCORRECT RT CHANGEMIND
# MEMORYRECENT MEMORYFIRST ISOLDCURRENT ISCORRECTCURRENT TOTAL1 TOTAL2 BUTTON MISSINGDATA
_FIELDS = {
    "session": "SESSION",
    "run": "RUN",
    "trial": "TRIAL",
    "time": "TIME",
    "rt": "RT",
    "button": "BUTTON",
    "change_mind": "CHANGEMIND",
    "total1": "TOTAL1",
    "total2": "TOTAL2",
    "is_correct": "ISCORRECT",
    "is_correct_current": "ISCORRECTCURRENT",
    "is_old_current": "ISOLDCURRENT",
    "memory_recent": "MEMORYRECENT",
    "memory_first": "MEMORYFIRST",
}
IMAGE_COLUMN = "73KID"


@dataclass
class Responses:
    path: Path
    records: TrialRecords
    images: np.ndarray  # 0-based 73k id of each trial

    @property
    def n_sessions(self) -> int:
        return self.images.size // TRIALS_PER_SESSION


def read_responses(path: Path) -> Responses:
    hint = "nsddata/ppdata/subjXX/behav/responses.tsv of the NSD download"
    require_file(path, "NSD behavioural responses", hint=hint)
    with path.open() as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
    missing = [c for c in (*_FIELDS.values(), IMAGE_COLUMN) if c not in header]
    if missing:
        raise UserError(
            f"no column {', '.join(missing)} in the header",
            where=str(path),
            hint="expected NSD's tab-separated responses.tsv with its header row",
        )
    try:
        table = np.loadtxt(path, delimiter="\t", skiprows=1, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise UserError(f"not a numeric tab-separated table ({reason(exc)})", where=str(path)) from exc
    n = table.shape[0]
    if n == 0 or n % TRIALS_PER_SESSION or table.shape[1] != len(header):
        raise UserError(
            f"{n} rows of {table.shape[1]} columns; expected whole sessions of {TRIALS_PER_SESSION} rows "
            f"of the {len(header)} header columns",
            where=str(path),
        )
    column = {name: table[:, header.index(name)] for name in header}
    sessions = np.repeat(np.arange(1, n // TRIALS_PER_SESSION + 1), TRIALS_PER_SESSION)
    if not np.array_equal(column["SESSION"], sessions):
        raise UserError(f"SESSION must run 1, 2, ... with {TRIALS_PER_SESSION} rows each, in order", where=str(path))
    images = integer_valued(path, IMAGE_COLUMN, column[IMAGE_COLUMN], 1, N_IMAGES) - 1
    records = TrialRecords(**{field: column[name] for field, name in _FIELDS.items()})
    return Responses(path, records, images)
