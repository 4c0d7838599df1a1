"""Typed configuration of the Mem model and its training (defaults: mem-spec 2.8 and 3.3).

Sections are UPPERCASE, as in the reference's YAML files, so that a grid names a setting by its
dotted path (``OPTIMIZER.LR``, ``DATASET.ROIS``). Grid parameters that are not settings are
lower-case by convention (``roi``, ``subj``): :func:`validate_params` relies on that to catch a
misspelt section at submit time.

``COMPAT`` selects memq's or the reference code's behaviour for every deliberate difference
(jobs/compat.py, jobs/mem/COMPAT.md); ``SWITCHES.<NAME>`` overrides one of them.

This module imports only the standard library, pydantic, jobs.compat, jobs.data.dark (names) and
jobs.mem.ablation: ``validate_params`` runs in ``memq submit`` and must stay fast. Over 400 lines
on purpose: every setting is declared here, next to its default and the reason for it.
"""

from __future__ import annotations

import difflib
import functools
import itertools
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model, model_validator

from jobs import compat
from jobs.data.dark import DARK_NAME_PATTERN
from jobs.mem.ablation import AblationConfig, column_problem

N_SLOTS = 33  # memory window T = -32..0 (jobs.data.layout.N_SLOTS; not imported: submit-time imports stay light)
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]
Probability = Annotated[float, Field(ge=0, lt=1)]
# Subject names become nn.ModuleDict keys and parameter-name parts: no dots, no spaces.
SubjectName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]+$")]


class ConfigError(ValueError):
    """A bad setting; the message names the dotted key and what is wrong with it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(_Section):
    DIR: str | None = None  # prepared data directory (jobs/data/FORMAT.md)
    # which prepared space of DIR: subjXX.h5 for fsaverage, subjXX.FMRI_SPACE.h5 else (fship, fship_b2, ...)
    FMRI_SPACE: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]+$")] = "fsaverage"
    SUBJECTS: Annotated[list[SubjectName], Field(min_length=1)] | None = None  # None: every subject in DIR
    ROIS: Annotated[list[str], Field(min_length=1)] | None = None  # None: whole brain; else their voxels, in order
    IMAGE_SIZE: PositiveInt = 224
    N_PREV_FRAMES: Annotated[int, Field(ge=2)] = 32  # T=-1 plus the cached frames T=-2..-N
    # teacher predictions DIR/dark/<DARK>/ that LOSS.DARK trains on (the reference's DARK_POSTFIX)
    DARK: Annotated[str, StringConstraints(pattern=DARK_NAME_PATTERN)] | None = None


class LoraConfig(_Section):
    RANK: PositiveInt = 4
    SCALE: float = 0.2


class AdaLNConfig(_Section):
    SCALE: float = 0.5


class BackboneConfig(_Section):
    """A timm ViT; LAYERS are 0-based block indices whose outputs are tapped."""

    NAME: str = "vit_base_patch14_dinov2.lvd142m"
    # a name installed by `memq data weights` (dinov2_vitb14...) or "random"; unset is an error
    WEIGHTS: str | None = None
    KWARGS: dict[str, int | float | bool | str] = {}  # extra timm.create_model arguments
    LAYERS: list[Annotated[int, Field(ge=0)]] = [2, 5, 8, 11]
    FEATURE_DIM: PositiveInt = 768  # the ViT's width; checked against the built model
    # per tap: 2 * FEATURE_DIM (avg + max pool of the grid), FEATURE_DIM for the last block's CLS
    CLS_DIMS: list[PositiveInt] = [1536, 1536, 1536, 768]
    LORA: LoraConfig = LoraConfig()
    ADAPTIVE_LN: AdaLNConfig = AdaLNConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not self.LAYERS or any(b <= a for a, b in itertools.pairwise(self.LAYERS)):
            raise ValueError(f"LAYERS must be strictly increasing and non-empty, got {self.LAYERS}")
        if len(self.CLS_DIMS) != len(self.LAYERS):
            raise ValueError(f"CLS_DIMS {self.CLS_DIMS} needs one entry per tapped layer {self.LAYERS}")
        allowed = {self.FEATURE_DIM, 2 * self.FEATURE_DIM}
        if not set(self.CLS_DIMS) <= allowed:
            raise ValueError(f"CLS_DIMS {self.CLS_DIMS} must be FEATURE_DIM or 2*FEATURE_DIM {sorted(allowed)}")
        return self


class SmallBackboneConfig(BackboneConfig):
    """The T=-1 backbone, plus the widths of the memory branch that share its section."""

    NAME: str = "vit_small_patch14_dinov2.lvd142m"
    LAYERS: list[Annotated[int, Field(ge=0)]] = [11]
    FEATURE_DIM: PositiveInt = 384
    CLS_DIMS: list[PositiveInt] = [384]
    WIDTH: PositiveInt = 64  # x_prev and per-frame memory width
    MERGE_WIDTH: PositiveInt = 64  # x_mem width; the compression hidden width is 4x this
    T_DIM: PositiveInt = 64  # time-embedding width


class ConvHeadConfig(_Section):
    WIDTH: PositiveInt = 192
    KERNEL: PositiveInt = 5
    DEPTH: PositiveInt = 3  # convolutions: DEPTH-1 residual blocks, then the output convolution
    MAX_DIM: PositiveInt = 1024  # a 1x1 reduction is added only above this many input channels


class CondConfig(_Section):
    DIM: PositiveInt = 256
    IN_DIM: PositiveInt = 35
    DROPOUT: Probability = 0.2
    PASSTHROUGH_DIM: PositiveInt = 32


class MlpConfig(_Section):
    WIDTH: PositiveInt = 128
    DEPTH: Annotated[int, Field(ge=2)] = 3  # linear layers


class RetinaMapperConfig(_Section):
    SIGMA: Annotated[float, Field(ge=0, lt=1)] = 0.01  # training noise; also shrinks tanh by 1-SIGMA


class PrevFeatConfig(_Section):
    DIM: PositiveInt = 1024


class SharedOutsConfig(_Section):
    USE: bool = False
    MLP: MlpConfig = MlpConfig(WIDTH=1024, DEPTH=3)


class VoxelOutsConfig(_Section):
    SHARED: SharedOutsConfig = SharedOutsConfig()


class ModelConfig(_Section):
    BACKBONE: BackboneConfig = BackboneConfig()
    BACKBONE_SMALL: SmallBackboneConfig = SmallBackboneConfig()
    CONV_HEAD: ConvHeadConfig = ConvHeadConfig()
    COND: CondConfig = CondConfig()
    COORDS_MLP: MlpConfig = MlpConfig()
    RETINA_MAPPER: RetinaMapperConfig = RetinaMapperConfig()
    PREV_FEAT: PrevFeatConfig = PrevFeatConfig()
    VOXEL_OUTS: VoxelOutsConfig = VoxelOutsConfig()
    MAX_TRAIN_VOXELS: PositiveInt = 25600  # voxels sampled per subject and training step
    CHUNK_SIZE: PositiveInt = 25600  # voxels per chunk of a forward pass (bounds its memory)
    WIDTH_RATIO: PositiveFloat = 1.0  # scales the conv-head, memory and passthrough widths
    TOPYNECK_PATH: str | None = None  # frozen RetinaMapper + LayerSelector weights (mem-spec 3.4)

    def _scaled(self, width: int) -> int:
        """A width after WIDTH_RATIO, rounded down as the reference does."""
        return int(width * self.WIDTH_RATIO)

    @property
    def conv_width(self) -> int:
        return self._scaled(self.CONV_HEAD.WIDTH)

    @property
    def prev_width(self) -> int:
        return self._scaled(self.BACKBONE_SMALL.WIDTH)

    @property
    def merge_width(self) -> int:
        return self._scaled(self.BACKBONE_SMALL.MERGE_WIDTH)

    @property
    def passthrough_dim(self) -> int:
        return self._scaled(self.COND.PASSTHROUGH_DIM)

    @property
    def d_model(self) -> int:
        """Width of the per-voxel feature: [x0, x_prev, x_mem, c_pt0, c_pt1]."""
        return self.conv_width + self.prev_width + self.merge_width + 2 * self.passthrough_dim

    @model_validator(mode="after")
    def _widths_positive(self) -> Self:
        widths = {
            "CONV_HEAD.WIDTH": self.conv_width,
            "BACKBONE_SMALL.WIDTH": self.prev_width,
            "BACKBONE_SMALL.MERGE_WIDTH": self.merge_width,
            "COND.PASSTHROUGH_DIM": self.passthrough_dim,
        }
        zero = [name for name, width in widths.items() if width < 1]
        if zero:
            raise ValueError(f"WIDTH_RATIO {self.WIDTH_RATIO} scales {', '.join(zero)} to 0")
        return self


class SyncConfig(_Section):
    USE: bool = True
    SKIP_EPOCHS: Annotated[int, Field(ge=0)] = 20
    EMA_BETA: Probability = 0.9
    UPDATE_RULE: Literal["raw", "exp", "square", "log", "norm"] = "raw"
    EXP_SCALE: float = 10.0  # used by UPDATE_RULE exp
    EXP_SHIFT: float = 0.0  # used by UPDATE_RULE exp
    LOG_SHIFT: float = 10.0  # used by UPDATE_RULE log


class DarkConfig(_Section):
    """Distillation (the reference's LOSS.DARK): the loss of epoch e is
    min(e/MAX_EPOCH, 1) * loss(pred, target) + max(1 - e/MAX_EPOCH, 0) * loss(pred, teacher),
    the teacher's predictions read from DATASET.DARK (jobs/mem/dark.py)."""

    USE: bool = False
    MAX_EPOCH: PositiveInt = 100  # the epoch from which the target alone is the loss


class LossConfig(_Section):
    SMOOTH_L1_BETA: PositiveFloat = 0.01
    SYNC: SyncConfig = SyncConfig()
    DARK: DarkConfig = DarkConfig()


class RegularizerConfig(_Section):
    LAYER: Annotated[float, Field(ge=0)] = 3e-5


class SchedulerConfig(_Section):
    WARMUP_EPOCHS: Annotated[int, Field(ge=0)] = 20
    WARMUP_LR: PositiveFloat = 1e-6  # linear warm-up start; the rate then stays at OPTIMIZER.LR


class OptimizerConfig(_Section):
    NAME: Literal["AdamW"] = "AdamW"
    LR: PositiveFloat = 3e-4
    WEIGHT_DECAY: Annotated[float, Field(ge=0)] = 3e-4  # not applied to biases
    SCHEDULER: SchedulerConfig = SchedulerConfig()


class TrainerConfig(_Section):
    PRECISION: Literal["16-mixed", "bf16-mixed", "32-true"] = "16-mixed"
    MATMUL_PRECISION: Literal["highest", "high", "medium"] = "medium"
    GRADIENT_CLIP_VAL: PositiveFloat = 0.5
    BATCH_SIZE: PositiveInt = 32
    ACCUMULATE_GRAD_BATCHES: PositiveInt = 1
    LIMIT_TRAIN_BATCHES: Fraction = 0.05
    LIMIT_VAL_BATCHES: Fraction = 0.25
    MAX_EPOCHS: PositiveInt = 500
    EARLY_STOP_PATIENCE: PositiveInt = 120
    SAVE_TOP_K: PositiveInt = 10
    # The resume file holds weights + optimiser state (GBs for the full model): write it at most
    # this often (seconds; 0 = every epoch) rather than every short epoch of 111 jobs over NFS.
    RESUME_EVERY_S: Annotated[float, Field(ge=0)] = 600.0
    SEED: int = 0


class ExperimentalConfig(_Section):
    """The reference's EXPERIMENTAL settings that ABLATION does not cover, as it means them (its
    memory-replay analysis: grids/replay.yaml; ABLATION.MEMORY_IMAGES off leaves the model one frame).
    T_IMAGE: the frame the T=0 branch sees, that many trial slots back (a blank slot: the blank image)."""

    T_IMAGE: Annotated[int, Field(ge=-(N_SLOTS - 1), le=0)] = 0
    BACKBONE_NOGRAD: bool = False  # on: the ViTs' LoRA and AdaLN and their behaviour embedders are frozen
    SHUFFLE_IMAGES: bool = False  # on: trials see other trials' frames (a baseline; jobs/data/memory.py)


class DataLoaderConfig(_Section):
    NUM_WORKERS: Annotated[int, Field(ge=0)] = 8


# One field per training-side switch of jobs/compat.py; None follows COMPAT.
SwitchesConfig = create_model(
    "SwitchesConfig",
    __base__=_Section,
    __doc__="Per-switch overrides of the COMPAT preset (jobs/mem/COMPAT.md); None follows the preset.",
    **{s.name: (Literal[s.choices] | None, None) for s in compat.switches("training")},  # type: ignore[valid-type]
)


class MemConfig(_Section):
    COMPAT: compat.Preset = "memq"  # memq's behaviour, or the reference code's, for every switch
    SWITCHES: SwitchesConfig = SwitchesConfig()  # type: ignore[valid-type]
    DATASET: DatasetConfig = DatasetConfig()
    MODEL: ModelConfig = ModelConfig()
    LOSS: LossConfig = LossConfig()
    REGULARIZER: RegularizerConfig = RegularizerConfig()
    OPTIMIZER: OptimizerConfig = OptimizerConfig()
    TRAINER: TrainerConfig = TrainerConfig()
    DATALOADER: DataLoaderConfig = DataLoaderConfig()
    ABLATION: AblationConfig = AblationConfig()  # inputs and modules taken out (jobs/mem/ablation.py)
    EXPERIMENTAL: ExperimentalConfig = ExperimentalConfig()  # frame choice and freezing (memory replay)

    @model_validator(mode="after")
    def _columns_known(self) -> Self:
        problem = column_problem(self.ABLATION.DROP_COLUMNS, self.MODEL.COND.IN_DIM)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def behaviour_dim(self) -> int:
        """How many behaviour columns the model reads: COND.IN_DIM less the dropped ones."""
        columns = self.ABLATION.columns
        return self.MODEL.COND.IN_DIM if columns is None else len(columns)

    @model_validator(mode="after")
    def _dark_named(self) -> Self:
        if self.LOSS.DARK.USE and self.DATASET.DARK is None:
            raise ValueError("LOSS.DARK.USE needs DATASET.DARK: the name of the teacher predictions to distil")
        return self

    @property
    def dark_teacher(self) -> str | None:
        """The teacher predictions this config distils (DATASET.DARK with LOSS.DARK.USE), or None."""
        return self.DATASET.DARK if self.LOSS.DARK.USE else None

    def switch(self, name: str) -> str:
        """The effective value of the training switch ``name``: SWITCHES.<name> if set, else COMPAT's."""
        entry = compat.switch(name)
        if entry.side != "training":
            raise KeyError(f"{name}: a data-preparation switch, not a training one")
        return getattr(self.SWITCHES, name) or entry.value(self.COMPAT)


@functools.cache
def config_keys() -> frozenset[str]:
    """Every settable dotted key (leaves only: a whole section cannot be replaced)."""

    def leaves(model: type[BaseModel], prefix: str) -> list[str]:
        keys = []
        for name, field in model.model_fields.items():
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                keys += leaves(kind, f"{prefix}{name}.")
            else:
                keys.append(prefix + name)
        return keys

    return frozenset(leaves(MemConfig, ""))


def _unknown(key: str, hint: str = "") -> str:
    close = difflib.get_close_matches(key, sorted(config_keys()), n=1, cutoff=0.6)
    suggestion = f"; did you mean {close[0]}?" if close else ""
    return f"{key}: not a config key{hint}{suggestion}"


def load_config(overrides: Mapping[str, Any] | None = None) -> MemConfig:
    """The default config with dotted-key ``overrides`` applied and validated."""
    overrides = dict(overrides or {})
    unknown = [_unknown(key) for key in overrides if key not in config_keys()]
    if unknown:
        raise ConfigError("\n".join(unknown))
    tree = MemConfig().model_dump()
    for key, value in overrides.items():
        *sections, leaf = key.split(".")
        node = tree
        for section in sections:
            node = node[section]
        node[leaf] = value
    try:
        return MemConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError("\n".join(_describe(problem) for problem in error.errors())) from None


def _describe(problem: Mapping[str, Any]) -> str:
    # pydantic locations run into list items and union members; the dotted key is the UPPERCASE part
    key = ".".join(str(part) for part in problem["loc"] if str(part).isupper())
    if problem["type"] == "value_error":  # a cross-field check of a section: its message says it all
        return f"{key}: {problem['ctx']['error']}" if key else str(problem["ctx"]["error"])
    return f"{key}: {problem['msg']} (got {problem['input']!r})"


def validate_params(params: Mapping[str, Any]) -> MemConfig:
    """The config of a job's params, checked at submit time: config keys valid, other keys lower-case.

    Lower-case keys are free template parameters of the grid (``roi``, ``subj``). A key with an
    upper-case letter is meant as a setting, so a typo such as ``OPTIMZER.LR`` is an error here
    rather than a silently ignored parameter; so is a setting written in lower case.
    """
    lower_keys = {key.lower(): key for key in config_keys()}
    problems = []
    for key in params:
        if key in config_keys():
            continue
        if key != key.lower():
            problems.append(_unknown(key, " (free grid parameters must be lower-case)"))
        elif key in lower_keys:
            problems.append(f"{key}: config keys are upper-case; did you mean {lower_keys[key]}?")
    if problems:
        raise ConfigError("\n".join(problems))
    return load_config({key: value for key, value in params.items() if key in config_keys()})


# Both frozen backbones randomly initialised, asked for explicitly (tests, the demo, speed benchmarks).
RANDOM_BACKBONES = {"MODEL.BACKBONE.WEIGHTS": "random", "MODEL.BACKBONE_SMALL.WEIGHTS": "random"}


def tiny() -> dict[str, Any]:
    """Overrides for a model small enough for CPU tests: tiny ViTs, random init asked for, narrow heads.

    Widths are chosen so every code path runs: the conv heads reduce (32 > MAX_DIM 24), the last
    block is tapped (raw CLS) next to pooled taps, and CHUNK_SIZE splits a few hundred voxels.
    """
    vit = {"patch_size": 8, "num_heads": 2, "init_values": 1.0}
    return {
        **RANDOM_BACKBONES,
        "DATASET.IMAGE_SIZE": 32,
        "DATASET.N_PREV_FRAMES": 6,
        "MODEL.BACKBONE.NAME": "vit_small_patch14_dinov2",
        "MODEL.BACKBONE.KWARGS": {**vit, "embed_dim": 32, "depth": 4},
        "MODEL.BACKBONE.LAYERS": [0, 2, 3],
        "MODEL.BACKBONE.FEATURE_DIM": 32,
        "MODEL.BACKBONE.CLS_DIMS": [64, 64, 32],
        "MODEL.BACKBONE_SMALL.NAME": "vit_small_patch14_dinov2",
        "MODEL.BACKBONE_SMALL.KWARGS": {**vit, "embed_dim": 16, "depth": 2},
        "MODEL.BACKBONE_SMALL.LAYERS": [1],
        "MODEL.BACKBONE_SMALL.FEATURE_DIM": 16,
        "MODEL.BACKBONE_SMALL.CLS_DIMS": [16],
        "MODEL.BACKBONE_SMALL.WIDTH": 8,
        "MODEL.BACKBONE_SMALL.MERGE_WIDTH": 8,
        "MODEL.BACKBONE_SMALL.T_DIM": 8,
        "MODEL.CONV_HEAD.WIDTH": 16,
        "MODEL.CONV_HEAD.KERNEL": 3,
        "MODEL.CONV_HEAD.MAX_DIM": 24,
        "MODEL.COND.DIM": 16,
        "MODEL.COND.PASSTHROUGH_DIM": 4,
        "MODEL.COORDS_MLP.WIDTH": 16,
        "MODEL.PREV_FEAT.DIM": 16,
        "MODEL.VOXEL_OUTS.SHARED.MLP.WIDTH": 32,
        "MODEL.MAX_TRAIN_VOXELS": 100,
        "MODEL.CHUNK_SIZE": 64,
        "TRAINER.PRECISION": "32-true",
        "TRAINER.RESUME_EVERY_S": 0,
        "TRAINER.BATCH_SIZE": 4,
        "DATALOADER.NUM_WORKERS": 0,
    }
