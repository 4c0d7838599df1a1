"""Reading what a Mem training job left behind: its CSV log, result and model layout."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jobs.mem.data import MemDataModule
from jobs.mem.model import MemModel
from jobs.mem.train.fit import job_config


def val_rows(job_dir: Path) -> list[dict[str, float]]:
    """The validation rows of the attempt's CSV log (one per epoch), values as floats."""
    with (job_dir / "logs" / "csv" / "metrics.csv").open() as fh:
        rows = [row for row in csv.DictReader(fh) if row["VAL/PearsonCorrCoef/mean"]]
    return [{k: float(v) for k, v in row.items() if v} for row in rows]


def result(job_dir: Path) -> dict[str, Any]:
    return json.loads((job_dir / "result.json").read_text())


def build_model(params: Mapping[str, Any]) -> MemModel:
    """A model of the job's config and data, as the job builds it."""
    config = job_config(params)
    assert config.DATASET.DIR is not None
    data = MemDataModule(config.DATASET.DIR, config.DATASET.SUBJECTS, config.DATASET.ROIS)
    return MemModel(config, data.subject_info())
