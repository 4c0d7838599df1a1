"""The params of a ``mindeye2.run`` job: which notebook of which checkout, with which arguments.

    kind: mindeye2.run
    grid: {subj: [1, 2, 5, 7]}
    params:
      repo: /nfs/code/MindEyeV2             # a clone; its src/ holds the README's download
      notebook: Train                       # Train, recon_inference, enhanced_recon_inference, final_evaluations
      args: {model_name: "final_multisubject_subj0{subj}", multi_subject: true, subj: "{subj}", batch_size: 42}

``args`` become the notebook's command line: ``--name=value``, ``--name`` for true and
``--no-name`` for false (its argparse BooleanOptionalAction). ``{param}`` in a value is replaced by
the job's param, so grid axes (``subj``) name models; every other param must be one of the
settings below or used that way (a misspelt setting is an error, not ignored). Paths default to
the README's layout: the dataset and cache files downloaded into ``{repo}/src``, the ``fmri``
virtual environment that ``src/setup.sh`` makes in ``{repo}/src/fmri``.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

NOTEBOOKS = ("Train", "recon_inference", "enhanced_recon_inference", "final_evaluations")
TRAIN = "Train"

ArgValue = str | int | float | bool


class MindEye2Params(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    repo: str
    notebook: Literal[NOTEBOOKS]  # type: ignore[valid-type]
    args: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], ArgValue] = Field(default_factory=dict)
    venv: str | None = None  # default {repo}/src/fmri
    data_path: str | None = None  # default {repo}/src
    cache_dir: str | None = None  # default data_path
    # Train goes through `accelerate launch` (the README's commands); the others run with the
    # venv's python, as the repository's recon_inference.slurm runs them
    launcher: Literal["accelerate", "python"] | None = None
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    # a multi-GPU accelerate job runs DeepSpeed stage 2 with the optimiser offloaded to the CPU,
    # the multi-GPU set-up the README asks for; off: accelerate's plain multi-GPU (DDP)
    deepspeed: bool = True

    @property
    def src(self) -> Path:
        return Path(self.repo) / "src"

    @property
    def venv_dir(self) -> Path:
        return Path(self.venv) if self.venv else self.src / "fmri"

    @property
    def data_dir(self) -> Path:
        return Path(self.data_path) if self.data_path else self.src

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else self.data_dir

    @property
    def uses_accelerate(self) -> bool:
        return (self.launcher or ("accelerate" if self.notebook == TRAIN else "python")) == "accelerate"

    def variables(self) -> dict[str, Any]:
        """What ``{name}`` in args may name: every param, the paths with their defaults."""
        return {**(self.model_extra or {}), "repo": self.repo, "data_path": str(self.data_dir),
                "cache_dir": str(self.cache)}

    def argv(self) -> list[str]:
        """``args`` as the notebook's command-line arguments, placeholders filled in."""
        out = []
        variables = self.variables()
        for name, value in self.args.items():
            if isinstance(value, bool):
                out.append(f"--{name}" if value else f"--no-{name}")
            else:
                out.append(f"--{name}={fill(str(value), variables)}")
        return out


def fill(text: str, variables: Mapping[str, Any]) -> str:
    """``text`` with each ``{name}`` replaced by ``variables[name]``; ValueError naming an unknown one."""
    out = []
    for literal, name, spec, conversion in string.Formatter().parse(text):
        out.append(literal)
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"{{{name}}} in {text!r} is not a param name")
        if name not in variables:
            raise ValueError(f"{text!r} uses {{{name}}}, which is not a param of the job")
        out.append(str(variables[name]))
    return "".join(out)


def parse(params: Mapping[str, Any]) -> MindEye2Params:
    """The params, checked; ValueError with one line saying what is wrong."""
    try:
        parsed = MindEye2Params.model_validate(dict(params))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ValueError(f"{where}: {error['msg']}") from None
    parsed.argv()  # every placeholder names a param
    used = {name for value in parsed.args.values() if isinstance(value, str)
            for _, name, _, _ in string.Formatter().parse(value) if name}
    for name, value in (parsed.model_extra or {}).items():
        if name not in used:
            raise ValueError(f"param {name!r} is not a setting of mindeye2.run (repo, notebook, args, venv, data_path, "
                             "cache_dir, launcher, mixed_precision, deepspeed) and no arg uses {" + name + "}")
        if not isinstance(value, str | int | float | bool):
            raise ValueError(f"param {name!r}: {value!r} is not a string or a number")
    if parsed.notebook == TRAIN and "batch_size" not in parsed.args:
        raise ValueError("notebook Train needs args.batch_size: Train.py reads GLOBAL_BATCH_SIZE (batch size x GPUs) "
                         "from its environment")
    return parsed


def validate(params: Mapping[str, Any], root: Path | None = None) -> None:
    """The kind's submit-time check (memq.job KindSpec.validate)."""
    parse(params)
