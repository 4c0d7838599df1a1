"""Stitching one scheme's ROI models into its whole-brain prediction, block of rows by block.

All the scheme's files are read side by side, once, the same rows at a time: each model's block
goes into its voxels' columns of one float32 scratch block (about 16 MB). Filling a block column
by column and using it whole is about three times faster than adding each model into a large
array on its own, and memory stays one block whatever the number of models.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from jobs.mem.ensemble.artifacts import SubjectPrediction, stream_rows
from memq.job import ChecksumError

BLOCK_BYTES = 1 << 24


def coverage(voxel_sets: Iterable[np.ndarray], n_voxels: int) -> str | None:
    """None if the sets cover each of ``n_voxels`` voxels exactly once; else what is wrong."""
    counts = np.zeros(n_voxels, dtype=np.int64)
    for voxels in voxel_sets:
        if voxels.size and (voxels.min() < 0 or voxels.max() >= n_voxels):
            return f"voxel positions outside 0..{n_voxels - 1}"
        np.add.at(counts, voxels, 1)
    missing, doubled = int((counts == 0).sum()), int((counts > 1).sum())
    if missing or doubled:
        return f"{missing} of {n_voxels} voxels predicted by no model, {doubled} by more than one"
    return None


def _placement(voxels: np.ndarray) -> tuple[np.ndarray | None, slice | np.ndarray]:
    """(order of a model's columns, where they go): a slice for one ascending run (a whole-brain
    model), else ascending positions, which scatter about twice as fast as ROI order."""
    if voxels.size and np.array_equal(voxels, np.arange(voxels[0], voxels[0] + voxels.size)):
        return None, slice(int(voxels[0]), int(voxels[0]) + voxels.size)
    order = np.argsort(voxels, kind="stable")
    return order, voxels[order]


def scheme_blocks(parts: Sequence[SubjectPrediction], n_voxels: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 [rows, n_voxels]) blocks of the scheme's whole-brain prediction.

    ``parts`` (the scheme's models of one subject, all of the same trials) must cover every voxel
    exactly once. Each yielded block is overwritten by the next: use it before asking for more.
    Files are checked against their sha256 as they are read (ChecksumError at the end).
    """
    problem = coverage([p.voxels for p in parts], n_voxels)
    if problem:
        raise ValueError(problem)
    n_rows = len(parts[0].trials)
    rows = max(1, BLOCK_BYTES // (4 * n_voxels))
    scratch = np.empty((min(rows, n_rows), n_voxels), dtype=np.float32)
    placements = [_placement(p.voxels) for p in parts]
    streams = [stream_rows(p, rows) for p in parts]
    for start in range(0, n_rows, rows):
        block = scratch[: min(rows, n_rows - start)]
        for stream, (order, columns) in zip(streams, placements, strict=True):
            values = next(stream)
            block[:, columns] = values if order is None else values[:, order]
        yield start, block
    for part, stream in zip(parts, streams, strict=True):
        for _ in stream:  # runs each reader to its end, where the checksum is verified
            raise ChecksumError(f"{part.path}: more rows than {n_rows}")
