"""Parameters of the data job kinds, checked at submit time (stdlib only: this runs on every submit)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jobs.compat import data_param_keys, data_switch_values
from jobs.weights.manifest import CATALOGUE, check_setting

# fsaverage: challenge vertices + high-NC vertices; func1mm_hip: the func1mm thalamus and MTL voxels
# (hippocampus); fship: every fsaverage vertex followed by the func1mm_hip voxels (memory replay)
SPACES = ("fsaverage", "func1mm_hip", "fship")
BETA_DIRS = {"b3": "betas_fithrf_GLMdenoise_RR", "b2": "betas_fithrf"}
DEFAULT_BETA = "b3"
# the compatibility switches (jobs/compat.py) each data job has, besides the preset ``compat``
PREPARE_NSD_SWITCHES = ("NC_SEARCH",)
CACHE_FEATURES_SWITCHES = ("IMAGE_JPEG",)  # for the images.h5 it writes first when alg_dir is given
ATLAS_W_SWITCHES = ("W_SEARCH",)
PREPARE_NSD = {"nsd_dir", "alg_dir", "out", "subject"}, {
    "space", "beta", "fsaverage_dir", "force", *data_param_keys(PREPARE_NSD_SWITCHES),
}  # fmt: skip
CACHE_FEATURES = {"data_dir"}, {
    "weights", "model", "image_size", "batch_size", "device", "alg_dir", "force",
    *data_param_keys(CACHE_FEATURES_SWITCHES),
}  # fmt: skip
FEATURE_WEIGHTS = "dinov2_vitl14"  # the installed name of the feature model's weights, by default
FEATURE_MODEL = CATALOGUE[FEATURE_WEIGHTS].model
_SUBJECT = re.compile(r"(?:subj)?0*(\d{1,2})")


def file_space(space: str, beta: str = DEFAULT_BETA) -> str:
    """The name a prepared space goes by (file names, ``DATASET.FMRI_SPACE``): the space, plus
    ``_b2`` for b2 betas, as the reference names them (``fship``, ``fship_b2``)."""
    return space if beta == DEFAULT_BETA else f"{space}_{beta}"


def parse_subject(value: str | int) -> str:
    """``3``, ``"03"`` or ``"subj03"`` -> ``"subj03"``; ValueError otherwise."""
    match = _SUBJECT.fullmatch(str(value).strip())
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"{value!r} is not a subject (write 1, 01 or subj01)")
    return f"subj{int(match.group(1)):02d}"


def _check_keys(params: Mapping[str, Any], keys: tuple[set[str], set[str]]) -> None:
    required, optional = keys
    missing = sorted(required - params.keys())
    if missing:
        raise ValueError(f"missing parameter {', '.join(missing)}")
    for key in sorted(params.keys() - required - optional):
        close = difflib.get_close_matches(key, [*required, *optional], n=1)
        raise ValueError(f"{key}: unknown parameter" + (f"; did you mean {close[0]}?" if close else ""))


def validate_prepare_nsd(params: Mapping[str, Any], root: Path | None = None) -> None:
    _check_keys(params, PREPARE_NSD)
    parse_subject(params["subject"])
    if params.get("space", SPACES[0]) not in SPACES:
        raise ValueError(f"space: {params['space']!r} is not one of {', '.join(SPACES)}")
    if params.get("beta", "b3") not in BETA_DIRS:
        raise ValueError(f"beta: {params['beta']!r} is not one of {', '.join(BETA_DIRS)}")
    data_switch_values(params, PREPARE_NSD_SWITCHES)


def validate_cache_features(params: Mapping[str, Any], root: Path | None = None) -> None:
    """Known params; ``weights`` a name (installed on ``root`` when known) or ``random``."""
    _check_keys(params, CACHE_FEATURES)
    data_switch_values(params, CACHE_FEATURES_SWITCHES)
    check_setting(root, "weights", params.get("weights", FEATURE_WEIGHTS), params.get("model", FEATURE_MODEL))


ATLAS_W = {"data_dir"}, {"soup", "source_job", "recipe", "k", "seed", "device", "force",
                         *data_param_keys(ATLAS_W_SWITCHES)}


def validate_atlas_w(params: Mapping[str, Any], root: Path | None = None) -> None:
    """Known params, and exactly one of ``soup`` (a file) and ``source_job`` (the whole-brain job)."""
    _check_keys(params, ATLAS_W)
    if ("soup" in params) == ("source_job" in params):
        raise ValueError("give one of soup (a state-dict file) and source_job (a whole-brain mem.train job)")
    if params.get("recipe", "uniform") not in ("uniform", "greedy"):
        raise ValueError(f"recipe: {params['recipe']!r} is not one of uniform, greedy")
    for key in ("k", "seed"):
        if key in params and (not isinstance(params[key], int) or params[key] < 1):
            raise ValueError(f"{key}: {params[key]!r} is not a positive integer")
    data_switch_values(params, ATLAS_W_SWITCHES)
