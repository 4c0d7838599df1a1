"""Repeat-context columns 21..34 of the behaviour table and its fill row (mem-spec 1.4)."""

from __future__ import annotations

import numpy as np

from jobs.data.layout import BASE_BEHAVIOR_DIM, FILL_ROW, REPEAT_COLUMNS


def neighbour_showings(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each trial, the previous and the next trial showing the same image (-1 if none)."""
    order = np.argsort(images, kind="stable")
    same = images[order[1:]] == images[order[:-1]]
    earlier, later = order[:-1][same], order[1:][same]
    prev = np.full(images.size, -1)
    nxt = np.full(images.size, -1)
    prev[later] = earlier
    nxt[earlier] = later
    return prev, nxt


def behavior_table(base: np.ndarray, design_images: np.ndarray) -> np.ndarray:
    """The stored ``behavior`` table, float32 [n_trials + 1, 35].

    ``base`` holds the 21 base features of the n_trials completed trials. ``design_images`` is the
    image id of every designed trial in order (it may run past the completed sessions). Columns
    21..27 repeat the columns p of the previous showing of the trial's image, 28..34 those of the
    next showing; a showing that does not exist or lies in a session never completed gets fill[p].
    The last row is the fill row.
    """
    n_trials = base.shape[0]
    if base.shape[1:] != (BASE_BEHAVIOR_DIM,) or design_images.shape[0] < n_trials:
        raise ValueError(
            f"need base [n, {BASE_BEHAVIOR_DIM}] and >= n design trials, got {base.shape}, {design_images.shape}"
        )
    p = list(REPEAT_COLUMNS)
    fill = FILL_ROW[:BASE_BEHAVIOR_DIM][p]

    def repeat_part(other: np.ndarray) -> np.ndarray:
        other = other[:n_trials]
        done = (other >= 0) & (other < n_trials)
        return np.where(done[:, None], base[np.where(done, other, 0)][:, p], fill)

    prev, nxt = neighbour_showings(np.asarray(design_images))
    table = np.concatenate([base, repeat_part(prev), repeat_part(nxt)], axis=1)
    return np.concatenate([table, FILL_ROW[None]], axis=0).astype(np.float32)
