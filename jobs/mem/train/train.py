"""Job kind ``mem.train``: train one Mem model (whole brain or one ROI) and keep its top-k checkpoints.

Params: dotted config keys (``OPTIMIZER.LR``, ``DATASET.ROIS``...); lower-case params are free
grid parameters and ignored here. Outputs: top-k trainable-weight checkpoints in the node-local
scratch directory, registered with memq; ``last.ckpt`` (resume file), ``logs/`` (TensorBoard,
CSV) and ``result.json`` in the attempt's directory; job metrics ``val_pearson`` and ``epochs``.
"""

from __future__ import annotations

from jobs.mem.train.fit import finish, fit
from memq.job import JobContext


def run(ctx: JobContext) -> None:
    finish(ctx, fit(ctx))
