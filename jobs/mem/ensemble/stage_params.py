"""Parameters of the kinds that turn trained ``mem.train`` jobs into an ensemble, and of
``mem.import``, whose jobs stand in for trained ones.

``memq soup`` and ``memq ensemble`` set them (memq/coordinator.py): ``source_job`` names the
trained job, ``recipe`` its soup, ``split`` what to predict; the combine job gets the grid, the
output directory and the trained jobs to use. Light imports only: the validators run in `memq`.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from jobs.data.dark import DARK_NAME_PATTERN
from jobs.data.layout import SPLITS
from jobs.mem.validate import validate_train

Recipe = Literal["uniform", "greedy"]
Split = Literal[SPLITS]  # type: ignore[valid-type]  # the prepared layout's split names
JobId = Annotated[int, Field(ge=1)]
# A job named by its key: what a grid's `each:` group gives its jobs (memq/each.py).
JobRef = JobId | Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
SUBMISSION_SPLIT, SCORE_SPLIT = "predict", "val2"  # the Algonauts test sessions; held-out with betas


class StageParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> Self:
        """The validated params; ValueError naming each bad key otherwise."""
        try:
            return cls.model_validate(dict(params))
        except ValidationError as error:
            problems = [f"{'.'.join(map(str, p['loc'])) or 'params'}: {p['msg']}" for p in error.errors()]
            raise ValueError(f"{cls.__doc__}: " + "; ".join(problems)) from None


class SoupParams(StageParams):
    """mem.soup params"""

    source_job: JobRef
    recipe: Recipe = "uniform"


class PredictParams(StageParams):
    """mem.predict params"""

    source_job: JobRef
    recipe: Recipe = "uniform"
    split: Split
    # also publish the predictions as teacher predictions DATASET.DIR/dark/<dark>/<split>/ (the
    # reference's xvbaa --save_name), for a student with LOSS.DARK and DATASET.DARK = <dark>
    dark: Annotated[str, Field(pattern=DARK_NAME_PATTERN)] | None = None


class EnsembleParams(StageParams):
    """mem.ensemble params"""

    out: str
    # `memq ensemble` names the trained jobs and their grid; in a pipeline grid (a combine group after
    # its `each:` predictions) they are left out: this job's grid, its trained jobs in `schemes`
    grid: str | None = None
    jobs: Annotated[list[JobId], Field(min_length=1)] | None = None
    recipe: Recipe = "uniform"
    schemes: Annotated[list[str], Field(min_length=1)] | None = None  # None: every scheme, in grid order
    partial: bool = False  # leave out schemes that do not cover every voxel, instead of failing

    @model_validator(mode="after")
    def _jobs_or_schemes(self) -> Self:
        if self.jobs is None and self.schemes is None:
            raise ValueError("name the trained jobs (jobs) or the schemes to average (schemes)")
        return self


class ImportParams(StageParams):
    """mem.import params"""

    model_config = ConfigDict(extra="ignore")  # the job's other params are its Mem settings

    # the reference run's files or glob patterns; {rois} is the job's DATASET.ROIS joined by "+"
    # ("all" for the whole brain), {repeat} its repeat index
    checkpoints: Annotated[list[str], Field(min_length=1)]
    sha256sums: str | None = None  # a `sha256sum` listing of the files: each is verified before it is read

    @model_validator(mode="after")
    def _known_placeholders(self) -> Self:
        for pattern in self.checkpoints:
            fields = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
            if not fields <= {"rois", "repeat"}:
                raise ValueError(f"checkpoints: {pattern}: placeholders are {{rois}} and {{repeat}}")
        return self


def validate_soup(params: Mapping[str, Any], root: Path | None = None) -> None:
    SoupParams.parse(params)


def validate_predict(params: Mapping[str, Any], root: Path | None = None) -> None:
    PredictParams.parse(params)


def validate_ensemble(params: Mapping[str, Any], root: Path | None = None) -> None:
    EnsembleParams.parse(params)


def validate_import(params: Mapping[str, Any], root: Path | None = None) -> None:
    validate_train(params, root)  # its Mem settings, backbone weights included
    ImportParams.parse(params)
