"""Submit-time checks of the params of ``mem.train`` and ``mem.topyneck`` (light imports: they run
in `memq submit`), and the backbone-weights check that job start repeats."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def validate_train(params: Mapping[str, Any], root: Path | None = None) -> None:
    """``mem.train``: valid settings, and backbone weights named (installed on ``root`` when known);
    ``soup_score``, if given, true or false."""
    if not isinstance(params.get("soup_score", False), bool):
        raise ConfigError(f"soup_score: true or false (got {params['soup_score']!r})")
    _check_weights(validate_params(params), root)


def validate_topyneck(params: Mapping[str, Any], root: Path | None = None) -> None:
    """``mem.topyneck``: as ``mem.train`` for its train stage; the gather stage builds no model."""
    config = validate_params(params)
    if params.get("stage") == "train":
        _check_weights(config, root)
