"""Submit-time checks of the params of ``mem.train`` and ``mem.topyneck`` (light imports: they run
in `memq submit`), and the backbone-weights check that job start repeats."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jobs.data.dark import TEACHER_SPLIT, missing_teacher
from jobs.mem.config import ConfigError, MemConfig, validate_params
from jobs.weights.manifest import WeightsError, check_setting


def weights_problems(config: MemConfig, root: Path | None) -> list[str]:
    """What is wrong with the backbone weights the config names: unset, not a name or, when the
    root is known, not installed there for the configured model."""
    problems = []
    model = config.MODEL
    for key, backbone in (("MODEL.BACKBONE", model.BACKBONE), ("MODEL.BACKBONE_SMALL", model.BACKBONE_SMALL)):
        try:
            check_setting(root, f"{key}.WEIGHTS", backbone.WEIGHTS, backbone.NAME)
        except WeightsError as error:
            problems.append(str(error))
    return problems


def _check_weights(config: MemConfig, root: Path | None) -> None:
    problems = weights_problems(config, root)
    if problems:
        raise ConfigError("; ".join(problems))


def teacher_problems(config: MemConfig) -> list[str]:
    """With LOSS.DARK, the teacher predictions must exist; checked where the data directory is
    visible from here (the job checks again at start)."""
    data_dir, teacher = config.DATASET.DIR, config.dark_teacher
    if teacher is None or data_dir is None or not Path(data_dir).is_dir():
        return []
    missing = missing_teacher(data_dir, teacher)
    return [] if missing is None else [missing]


def validate_train(params: Mapping[str, Any], root: Path | None = None) -> None:
    """``mem.train``: valid settings, and backbone weights named (installed on ``root`` when known);
    ``soup_score``, if given, true or false."""
    if not isinstance(params.get("soup_score", False), bool):
        raise ConfigError(f"soup_score: true or false (got {params['soup_score']!r})")
    _check_weights(validate_params(params), root)


def validate_train_grid(jobs: list[dict[str, Any]], upstream: Mapping[str, set[str]],
                        root: Path | None = None) -> tuple[str, str] | None:
    """``mem.train`` across a grid: a student of LOSS.DARK needs its teacher predictions, either
    present or made by a group it waits for (a mem.predict of split train with ``dark`` the same
    name, on the same DATASET.DIR) - one grid can then run teacher and student (grids/mem-light-distill.yaml)."""
    by_key = {job["key"]: job for job in jobs}

    def makes(job: dict[str, Any], name: str, data_dir: str | None) -> bool:
        p = job["params"]
        source = by_key.get(str(p.get("source_job")))
        return (job["kind"] == "mem.predict" and p.get("dark") == name and p.get("split") == TEACHER_SPLIT
                and source is not None and source["params"].get("DATASET.DIR") == data_dir)

    for student in jobs:
        if student["kind"] != "mem.train":
            continue
        config = validate_params(student["params"])
        name = config.dark_teacher
        if name is None or any(makes(job, name, config.DATASET.DIR) for job in jobs
                               if job["group"] in upstream[student["group"]]):
            continue
        problems = teacher_problems(config)
        if problems:
            return student["group"], problems[0]
    return None


def validate_topyneck(params: Mapping[str, Any], root: Path | None = None) -> None:
    """``mem.topyneck``: as ``mem.train`` for its train stage; the gather stage builds no model."""
    config = validate_params(params)
    if params.get("stage") == "train":
        _check_weights(config, root)
