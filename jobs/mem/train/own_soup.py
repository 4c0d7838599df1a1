"""The greedy soup of a run's own top-k checkpoints, made right after training.

The reference's training runs (``simple_train``: xvaa, xdcaa, xdcac, xdea) all end this way:
greedy soup selected on val1, scored on val2. ``mem.topyneck`` keeps the soup's topyneck;
``mem.train`` with ``soup_score: true`` records its val2 r (the ablation table's measure).
"""

from __future__ import annotations

from typing import Any

from jobs.mem.build import Built, build
from jobs.mem.ensemble.soup import greedy_soup
from memq.job import JobContext


def own_soup(ctx: JobContext) -> tuple[Built, dict[str, Any]]:
    """The greedy soup of this run's registered checkpoints, loaded into a freshly built model,
    and its summary (members, the selection split's score and val2)."""
    rows = ctx.checkpoints()
    if not rows:
        raise RuntimeError("the run left no checkpoint to make its soup from")
    built = build(ctx.params, ctx.repeat, ctx.gpus, ctx.root)
    result, split = greedy_soup(ctx, rows, built)
    built.model.load_trainable_state_dict(result.state)
    return built, {"members": result.members, "selection_split": split, split: result.selection_score,
                   "val2": result.reported_score}
