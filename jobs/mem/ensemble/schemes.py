"""Schemes: the sets of trained jobs whose ROI models together predict every voxel once (mem-spec 4.3).

A scheme is a grid group (an atlas: A, W, R1...); a group with repeats gives one scheme per
repeat (``all`` x3 -> all-0, all-1, all-2). Schemes run in grid order (by their first job id),
jobs within one by id, so stitching and averaging always add in the same order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from memq.job import scheme_name


def scheme_of(job: dict[str, Any], repeated: set[str]) -> str:
    return scheme_name(job["group"], job["repeat"], job["group"] in repeated)


def schemes(jobs: Sequence[dict[str, Any]], grid_jobs: Iterable[dict[str, Any]]) -> dict[str, list[int]]:
    """Scheme name -> job ids of ``jobs``, in grid order; ``grid_jobs`` (every job of the grid)
    tells which groups have repeats."""
    repeated = {job["group"] for job in grid_jobs if job["repeat"] > 0}
    out: dict[str, list[int]] = {}
    for job in sorted(jobs, key=lambda j: j["id"]):
        out.setdefault(scheme_of(job, repeated), []).append(job["id"])
    return out


def select(found: dict[str, list[int]], wanted: Sequence[str] | None, *, partial: bool) -> dict[str, list[int]]:
    """The schemes to average, in the order asked for (default: all, in grid order).

    A scheme asked for but without jobs is an error, unless ``partial``.
    """
    if wanted is None:
        return dict(found)
    missing = [name for name in wanted if name not in found]
    if missing and not partial:
        raise ValueError(f"no jobs for scheme(s) {', '.join(missing)}; schemes here: {', '.join(found)}")
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"a scheme is listed twice in {list(wanted)}")
    return {name: found[name] for name in wanted if name in found}
