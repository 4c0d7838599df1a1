"""Job kind ``mem.train``: train one Mem model (whole brain or one ROI) and keep its top-k checkpoints.

Params: dotted config keys (``OPTIMIZER.LR``, ``DATASET.ROIS``...); lower-case params are free
grid parameters and ignored here, except ``soup_score``: true also makes the greedy soup of the
run's checkpoints and records its val2 r (metric ``soup_val2``, ``soup`` in result.json), as the
reference's ablation runs do (jobs/mem/train/own_soup.py). Outputs: top-k trainable-weight
checkpoints in the node-local scratch directory, registered with memq; ``last.ckpt`` (resume
file), ``logs/`` (TensorBoard, CSV) and ``result.json`` in the attempt's directory; job metrics
``val_pearson`` and ``epochs``.
"""

from __future__ import annotations

from typing import Any

from jobs.mem.train.fit import finish, fit
from jobs.mem.train.own_soup import own_soup
from memq.job import JobContext


def run(ctx: JobContext) -> None:
    fitted = fit(ctx)
    extra: dict[str, Any] = {}
    if ctx.params.get("soup_score"):
        _, extra["soup"] = own_soup(ctx)
        ctx.record_metrics(soup_val2=extra["soup"]["val2"])
    finish(ctx, fitted, **extra)
