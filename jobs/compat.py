"""Every deliberate difference from the reference code (huzeyann/MemoryEncodingModel), as a named switch.

One registry feeds three things: the ``SWITCHES`` section of the Mem config (training-side
switches, ``--set SWITCHES.<NAME>=...``), the params and options of the data-preparation jobs
(data-side switches, ``compat`` plus ``<name>`` in lower case) and the table in
``jobs/mem/COMPAT.md`` (:func:`markdown_table`). A preset, ``COMPAT`` / ``compat``, gives every
switch either memq's value or the reference's; an explicit switch value overrides the preset, so
a run can reproduce the paper and A/B-test one fix at a time.

Standard library only: the config and the submit-time checks import this.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Preset = Literal["memq", "reference"]
PRESETS: tuple[str, ...] = ("memq", "reference")
DATA_PRESET_KEY = "compat"  # the preset's param name in data jobs (COMPAT in the Mem config)


@dataclass(frozen=True)
class Switch:
    """One difference: its values under each preset, and the sentences of the docs table."""

    name: str  # UPPER_CASE; data switches are params in lower case
    side: Literal["training", "data"]
    memq: str
    reference: str
    changes: str  # what the switch changes
    why: str  # why memq's value is the default
    extra: tuple[str, ...] = ()  # values beyond the two presets' (for A/B tests of other variants)

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.memq, self.reference, *self.extra)))

    @property
    def param(self) -> str:
        """The data-job param and (with dashes) CLI option of a data switch."""
        return self.name.lower()

    def value(self, preset: str) -> str:
        return self.reference if preset == "reference" else self.memq


SWITCHES: tuple[Switch, ...] = (
    Switch(
        "PE_BOUNDS", "training", "subject", "subset",
        "The bounds that normalise voxel coordinates before the positional encoding of the RetinaMapper, "
        "LayerSelector and shared readout: all the subject's voxels, or whichever voxels are passed in "
        "(the model's ROI; the random training sample while the MLP trains).",
        "A voxel's encoding must not depend on which other voxels are evaluated with it: with per-subset "
        "bounds an ROI model sees a frozen whole-brain topyneck at shifted positions (mem-spec 5.5).",
    ),
    Switch(
        "PREV_BHVS", "training", "global", "local",
        "Which behaviour rows the memory slots T=-1..-32 get: those of trial g-k (global trial index), or "
        "the reference's local index into the split's sorted trials, with the split's last trial as the "
        "row of a blank slot.",
        "The reference's rows are right only on unsplit data; on a split they belong to other trials, and "
        "blank slots get a real trial's behaviour instead of the fill row (mem-spec 1.5, 5.4).",
    ),
    Switch(
        "VAL_SUBSET", "training", "fixed", "redrawn",
        "With TRAINER.LIMIT_VAL_BATCHES < 1: validate on the same random subset of val1 every epoch, or "
        "on a fresh one (the reference shuffled val1 and took the first batches).",
        "A fixed subset keeps per-voxel r comparable across epochs, which the SYNC EMA, early stopping "
        "and checkpoint ranking all rely on (mem-spec 5.10).",
    ),
    Switch(
        "WARMUP_LAG", "training", "none", "one_epoch",
        "Which epoch's rate the scheduler sets after an epoch: the next epoch's, or the finished epoch's "
        "(the reference stepped timm's scheduler with the current epoch, so epoch e trains at the rate "
        "of e-1 and the warm-up lasts one epoch longer, its first two epochs at WARMUP_LR).",
        "WARMUP_EPOCHS then means what it says; the difference is one epoch of a 20-epoch warm-up.",
    ),
    Switch(
        "SYNC_SANITY", "training", "skip", "feed",
        "Whether Lightning's sanity-check validation (2 batches before training) feeds the SYNC EMA.",
        "Two batches give a noisy per-voxel r that then stays in the EMA; the reference's PL 1.x hook "
        "ran during the sanity check too (mem-spec 5.10).",
    ),
    Switch(
        "SYNC_START", "training", "at_skip", "after_skip",
        "The first epoch whose loss the SYNC weights multiply: SKIP_EPOCHS (weights from the EMA so far), "
        "or SKIP_EPOCHS + 1 (the reference computed the first weights at the end of epoch SKIP_EPOCHS).",
        "The EMA already has SKIP_EPOCHS updates at epoch SKIP_EPOCHS; one epoch, kept for exact "
        "reproduction only.",
    ),
    Switch(
        "COORD_CACHE", "training", "fresh", "stale",
        "When a cached coordinate-MLP output is dropped: on every weight load, train/eval switch and "
        "device change, or only when the MLP trains (the reference), so loading a checkpoint or soup "
        "into a model keeps the mapper outputs of the weights it had before.",
        "A stale cache evaluates soups and checkpoints with another model's RetinaMapper and "
        "LayerSelector unless those are frozen (mem-spec 5.6).",
    ),
    Switch(
        "GREEDY_SOUP", "training", "val1_once", "val2_twice",
        "The greedy soup (mem.soup, recipe greedy): select on val1 and report val2, the best checkpoint "
        "in the soup once; or the reference's: start from the best checkpoint with a score of 0, try "
        "every checkpoint from the best on (so the best enters twice), select and report on val2.",
        "Selecting on the split that is reported biases the reported score upwards, and counting the "
        "best checkpoint twice is an accident of the loop (mem-spec 4.2, 5.7).",
    ),
    Switch(
        "LAYER_ENTROPY", "training", "uniform", "uniform",
        "The sign of the LayerSelector regulariser REGULARIZER.LAYER * mean(sum w log w): 'uniform' "
        "(as the reference) pushes each voxel's layer weights towards uniform, 'sharp' towards one layer.",
        "Not changed: the reference's sign looks unintended (mem-spec 2.3, 5.9), but nothing shows that "
        "'sharp' is better. The switch is here to A/B-test it.",
        extra=("sharp",),
    ),
    Switch(
        "NC_SEARCH", "data", "bisect", "scale",
        "How prepare-nsd finds the noise-ceiling threshold above which non-challenge vertices are added: "
        "bisection, or the reference's search (start at the challenge mean, x0.5 while the added "
        "vertices' mean NC is above it, else x1.5, until the means agree within 0.001).",
        "The x0.5/x1.5 search can oscillate forever and stops at a coarser threshold; bisection always "
        "ends (mem-spec 1.6, 5.8). Where the reference's search ends, the two usually add different "
        "vertices.",
    ),
    Switch(
        "W_SEARCH", "data", "bisect", "scale",
        "How atlas-w finds the fcluster distance threshold that cuts the Ward tree into exactly 9 "
        "clusters: bisection, or the reference's search (start at 20, x1.5 while there are too many "
        "clusters, x0.5 while too few).",
        "The reference's search can oscillate forever between too many and too few (mem-spec 1.8, 5.8); "
        "both give the same 9 clusters when it ends.",
    ),
    Switch(
        "IMAGE_JPEG", "data", "none", "q95",
        "Whether prepare-nsd stores each resized Algonauts image as it is, or after a JPEG round trip at "
        "quality 95 (the reference wrote images/{id}.jpeg); the memory features are computed from the "
        "stored images, so they change too.",
        "The JPEG step only adds compression artefacts to the model's input (mem-spec 1.3).",
    ),
)

_BY_NAME = {s.name: s for s in SWITCHES}


def switch(name: str) -> Switch:
    """The switch called ``name``; KeyError naming the known ones otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
        hint = f"; did you mean {close[0]}?" if close else f" (known: {', '.join(_BY_NAME)})"
        raise KeyError(f"{name}: not a compatibility switch{hint}") from None


def switches(side: Literal["training", "data"]) -> tuple[Switch, ...]:
    return tuple(s for s in SWITCHES if s.side == side)


def data_switch_values(params: Mapping[str, Any], names: Sequence[str]) -> dict[str, str]:
    """Effective values of the data switches ``names`` from a data job's params (or CLI options):
    ``compat`` (the preset, default memq) and per-switch overrides (``nc_search: scale``), None
    meaning unset. ValueError names a bad value and the choices."""
    preset = params.get(DATA_PRESET_KEY) or "memq"
    if preset not in PRESETS:
        raise ValueError(f"{DATA_PRESET_KEY}: {preset!r} is not one of {', '.join(PRESETS)}")
    values = {}
    for name in names:
        s = switch(name)
        value = params.get(s.param) or s.value(preset)
        if value not in s.choices:
            raise ValueError(f"{s.param}: {value!r} is not one of {', '.join(s.choices)}")
        values[name] = value
    return values


def data_param_keys(names: Sequence[str]) -> set[str]:
    """The optional params of a data job that has the data switches ``names``."""
    return {DATA_PRESET_KEY, *(switch(name).param for name in names)}


def markdown_table() -> str:
    """The docs table of every switch (jobs/mem/COMPAT.md holds this text; a test keeps them equal)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "| switch | where | memq | reference | other values | what it changes | why memq's default |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in SWITCHES:
        where = f"`SWITCHES.{s.name}`" if s.side == "training" else f"`{s.param}` / `--{s.param.replace('_', '-')}`"
        extra = ", ".join(f"`{v}`" for v in s.extra) or "-"
        lines.append(
            f"| {s.name} | {where} | `{s.memq}` | `{s.reference}` | {extra} | {cell(s.changes)} | {cell(s.why)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
