"""Switches that take inputs or modules out of the Mem model, for the paper's ablations (section ABLATION).

Each is one of the reference's ``EXPERIMENTAL.*`` settings (mem/config.py of
huzeyann/MemoryEncodingModel), named here for what it removes. The defaults are the full model;
``grids/whole-brain.yaml`` sets them per row of the ablation table.

==========================  ==================================  =============================================
setting                     the reference's                     what turning it off does
==========================  ==================================  =============================================
MEMORY_IMAGES               EXPERIMENTAL.USE_PREV_FRAME         no T=-1 image, no cached frames T=-2..-N and
                                                                no behaviour of those frames: the T=-1
                                                                branch, the memory branch and the T=-1
                                                                passthrough are not built, their features
                                                                are zeros ("w/o memI", the frame T=0 only)
RETINA_MAPPER               EXPERIMENTAL.USE_RETINA_MAPPER      no conv heads, no RetinaMapper: a voxel reads
                                                                the class features only
LAYER_SELECTOR              EXPERIMENTAL.USE_LAYER_SELECTOR     no LayerSelector: class features averaged
                                                                over the tapped layers, sampled grids summed
BEHAVIOUR                   EXPERIMENTAL.USE_BHV                every behaviour row zeroed before the model
                                                                reads it (the embeddings' biases remain)
BEHAVIOUR_PASSTHROUGH       EXPERIMENTAL.USE_BHV_PASSTHROUGH    the T=0 passthrough vector is zeros (not built)
DROP_COLUMNS                EXPERIMENTAL.BEHV_SELECTION         those column sets of the 35 behaviour columns
                                                                are not read; the embeddings take the rest
                                                                (the reference set MODEL.COND.IN_DIM by hand)
==========================  ==================================  =============================================

A feature that is switched off enters the voxel readout as zeros of its usual width, as in the
reference, so the readout's mean over d_model (mem-spec 2.7) keeps its scale.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

# The behaviour columns of mem-spec 1.4 in the three sets of the paper's table (C = the condition
# vector): the reference's xdcac_ablation.py, `answer`, `memory` and `time`.
BEHAVIOUR_WIDTH = 35
COLUMN_SETS: dict[str, tuple[int, ...]] = {
    # B: RT, button, change of mind, totals, correctness (0-7), and the same answers at the image's
    # previous and next showing (21-34)
    "answer": (*range(0, 8), *range(21, 35)),
    # M: seen-before flags, is-old, time and trials since the recent and the first showing (8-18)
    "memory": tuple(range(8, 19)),
    # T: run and trial within the run (19-20)
    "time": (19, 20),
}
ColumnSet = Literal["answer", "memory", "time"]


class AblationConfig(BaseModel):
    """Inputs and modules of the full model (all on by default; see the module's table). MemConfig
    checks DROP_COLUMNS against the behaviour width (:func:`column_problem`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    MEMORY_IMAGES: bool = True
    RETINA_MAPPER: bool = True
    LAYER_SELECTOR: bool = True
    BEHAVIOUR: bool = True
    BEHAVIOUR_PASSTHROUGH: bool = True
    DROP_COLUMNS: list[ColumnSet] = []

    @property
    def columns(self) -> tuple[int, ...] | None:
        """The behaviour columns the model reads, in order; None for all of them."""
        return behaviour_columns(self.DROP_COLUMNS) if self.DROP_COLUMNS else None


def behaviour_columns(dropped: list[ColumnSet] | tuple[ColumnSet, ...]) -> tuple[int, ...]:
    """The columns of the 35 left once the named sets are dropped, in order."""
    gone = {column for name in dropped for column in COLUMN_SETS[name]}
    return tuple(c for c in range(BEHAVIOUR_WIDTH) if c not in gone)


def column_problem(dropped: list[ColumnSet], in_dim: int) -> str | None:
    """What is wrong with ``ABLATION.DROP_COLUMNS`` for a ``MODEL.COND.IN_DIM``-wide behaviour; None if nothing."""
    if len(set(dropped)) != len(dropped):
        return f"ABLATION.DROP_COLUMNS {dropped} names a column set twice"
    if dropped and in_dim != BEHAVIOUR_WIDTH:
        return (f"ABLATION.DROP_COLUMNS names columns of the {BEHAVIOUR_WIDTH}-column behaviour table; "
                f"MODEL.COND.IN_DIM is {in_dim}")
    if dropped and not behaviour_columns(dropped):
        return "ABLATION.DROP_COLUMNS drops every behaviour column; use ABLATION.BEHAVIOUR: false"
    return None
