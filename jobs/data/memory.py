"""Memory windows: the image table of mem-spec 1.1 and the behaviour rows of memory slots (1.5)."""

from __future__ import annotations

import random

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from jobs.data.layout import BLANK, N_SLOTS, TRIALS_PER_SESSION


def memory_index_from_design(design: np.ndarray) -> np.ndarray:
    """``memory_index`` int32 [750 * n_sessions, 33] from the slot design.

    ``design`` is int [n_sessions, n_runs, n_slots]: the 73k id shown in each time-locked trial slot,
    ``BLANK`` for a blank slot (NSD: 12 runs of 75 slots, 750 stimulus slots per session). Row g
    holds the 33 slots of g's run ending at g's slot; slots before the run start are blank.
    """
    design = np.asarray(design)
    per_session = (design != BLANK).sum(axis=(1, 2))
    if design.ndim != 3 or np.any(per_session != TRIALS_PER_SESSION):
        raise ValueError(
            f"design must be [sessions, runs, slots] with {TRIALS_PER_SESSION} stimulus slots "
            f"per session; got shape {design.shape}, stimulus slots {per_session.tolist()}"
        )
    pad = np.full((*design.shape[:2], N_SLOTS - 1), BLANK, dtype=design.dtype)
    windows = sliding_window_view(np.concatenate([pad, design], axis=2), N_SLOTS, axis=2)
    return windows[design != BLANK].astype(np.int32)


def prev_behavior_rows(memory_index: np.ndarray) -> np.ndarray:
    """Behaviour row of slots T = -1..-32 of every trial: int64 [n_trials, 32].

    Indexed by global trial (the fix of mem-spec 1.5): a window never leaves its run, so the k-th
    non-blank slot before trial g shows trial g - k. Blank slots get ``n_trials``, the fill row.
    Raises if the table contradicts this (a slot's image is not the image of the trial it names).
    """
    n_trials = memory_index.shape[0]
    shown = memory_index[:, N_SLOTS - 2 :: -1]  # entries 31..0 = T=-1..-32
    nonblank = shown != BLANK
    rows = np.arange(n_trials)[:, None] - np.cumsum(nonblank, axis=1)
    rows = np.where(nonblank, rows, n_trials)
    valid = rows[nonblank]
    if valid.size and (valid.min() < 0 or np.any(memory_index[valid, N_SLOTS - 1] != shown[nonblank])):
        raise ValueError("memory_index is inconsistent: a memory slot does not show trial g - k")
    return rows


def local_prev_behavior_rows(memory_index: np.ndarray, split: np.ndarray) -> np.ndarray:
    """The reference's behaviour rows of slots T = -1..-32 for the trials of ``split``, in sorted
    trial order: int64 [len(split), 32] (switch PREV_BHVS local, mem-spec 1.5).

    The reference subset the behaviour table to the split's sorted trials and then counted back
    from the sample's *position* in that subset: the k-th non-blank slot before position i got row
    i - k of the subset (wrapping to its end, as Python's negative indices do), a blank slot the
    subset's last row. Returned as global trial indices, so the rows of ``behavior()`` are the ones
    the reference used.
    """
    order = np.sort(np.asarray(split))
    shown = memory_index[order, N_SLOTS - 2 :: -1]
    nonblank = shown != BLANK
    local = (np.arange(order.size)[:, None] - np.cumsum(nonblank, axis=1)) % order.size
    return np.where(nonblank, order[local], order[-1]).astype(np.int64)


def reference_shuffle(n_rows: int, seed: str) -> np.ndarray:
    """Row sources of the reference's image shuffle (EXPERIMENTAL.SHUFFLE_IMAGES): row i of the
    shuffled memory table is row ``source[i]`` of the original.

    The reference shuffled its [trials, 33] NumPy table with Python's ``random.shuffle``, whose
    swap ``x[i], x[j] = x[j], x[i]`` copies through row views: row i receives row j and row j keeps
    its own, so rows repeat and others vanish. This is that procedure, drawn from
    ``random.Random(seed)``.
    """
    rng = random.Random(seed)
    source = np.arange(n_rows)
    for i in range(n_rows - 1, 0, -1):
        source[i] = source[rng.randrange(i + 1)]
    return source

