"""Parameters of the kinds that turn trained ``mem.train`` jobs into an ensemble.

``memq soup`` and ``memq ensemble`` set them (memq/coordinator.py): ``source_job`` names the
trained job, ``recipe`` its soup, ``split`` what to predict; the combine job gets the grid, the
output directory and the trained jobs to use. Light imports only: the validators run in `memq`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobs.data.layout import SPLITS

Recipe = Literal["uniform", "greedy"]
Split = Literal[SPLITS]  # type: ignore[valid-type]  # the prepared layout's split names
JobId = Annotated[int, Field(ge=1)]
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

    source_job: JobId
    recipe: Recipe = "uniform"


class PredictParams(StageParams):
    """mem.predict params"""

    source_job: JobId
    recipe: Recipe = "uniform"
    split: Split


class EnsembleParams(StageParams):
    """mem.ensemble params"""

    grid: str
    out: str
    jobs: Annotated[list[JobId], Field(min_length=1)]
    recipe: Recipe = "uniform"
    schemes: Annotated[list[str], Field(min_length=1)] | None = None  # None: every scheme, in grid order
    partial: bool = False  # leave out schemes that do not cover every voxel, instead of failing


def validate_soup(params: Mapping[str, Any], root: Path | None = None) -> None:
    SoupParams.parse(params)


def validate_predict(params: Mapping[str, Any], root: Path | None = None) -> None:
    PredictParams.parse(params)


def validate_ensemble(params: Mapping[str, Any], root: Path | None = None) -> None:
    EnsembleParams.parse(params)
