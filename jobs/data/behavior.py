"""The behaviour table of mem-spec 1.4: base columns 0..20 from trial records, repeat context 21..34.

Sources differ (NSD ``responses.tsv``, the MindEye2 behaviour arrays, the synthetic generator);
each fills :class:`TrialRecords` and the same code derives the features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jobs.data.layout import BASE_BEHAVIOR_DIM, FILL_ROW, REPEAT_COLUMNS, TRIALS_PER_SESSION

EPS = 1e-8
NO_SHOWING_DAYS = 500.0  # time since an earlier showing that does not exist
NO_SHOWING_TRIALS = 15000.0  # trials since an earlier showing that does not exist
MINUTES_PER_DAY = 1440


@dataclass
class TrialRecords:
    """One entry per stimulus trial of a subject, trials in order (NSD ``responses.tsv`` meaning).

    NaN marks a missing value. ``time`` is in days (a MATLAB serial date in NSD); ``trial``
    counts stimulus trials within the run (1-based); ``memory_recent`` / ``memory_first`` count
    the stimulus trials between this showing and the most recent / first earlier showing of the
    image (NaN for a first showing).
    """

    session: np.ndarray
    run: np.ndarray
    trial: np.ndarray
    time: np.ndarray
    rt: np.ndarray
    button: np.ndarray
    change_mind: np.ndarray
    total1: np.ndarray
    total2: np.ndarray
    is_correct: np.ndarray
    is_correct_current: np.ndarray
    is_old_current: np.ndarray
    memory_recent: np.ndarray
    memory_first: np.ndarray


def zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + EPS)


def session_zscore(x: np.ndarray, session: np.ndarray) -> np.ndarray:
    """z-score within each session's trials."""
    out = np.empty_like(x, dtype=np.float64)
    for s in np.unique(session):
        out[session == s] = zscore(x[session == s])
    return out


def nan_to_mean(x: np.ndarray) -> np.ndarray:
    """NaN replaced by the mean of the other values (0 when every value is NaN)."""
    finite = ~np.isnan(x)
    return np.where(finite, x, x[finite].mean() if finite.any() else 0.0)


def days_since(time: np.ndarray, between: np.ndarray) -> np.ndarray:
    """Days since the earlier showing ``between + 1`` trials back; NO_SHOWING_DAYS where NaN."""
    g = np.arange(time.size)
    seen = ~np.isnan(between)
    earlier = g - np.where(seen, between, 0).astype(np.int64) - 1
    if np.any(earlier[seen] < 0):
        raise ValueError("a memory count points before the first trial")
    return np.where(seen, time - time[np.where(seen, earlier, 0)], NO_SHOWING_DAYS)


def base_behavior(r: TrialRecords) -> np.ndarray:
    """float64 [n_trials, 21]: columns 0..20 of mem-spec 1.4."""
    if r.session.size % TRIALS_PER_SESSION:
        raise ValueError(f"{r.session.size} trials are not whole sessions of {TRIALS_PER_SESSION}")
    rt = nan_to_mean(r.rt)
    columns = [
        zscore(rt),
        session_zscore(rt, r.session),
        *(nan_to_mean(x) for x in (r.button, r.change_mind, r.total1, r.total2, r.is_correct, r.is_correct_current)),
        (~np.isnan(r.memory_recent)).astype(np.float64),
        (~np.isnan(r.memory_first)).astype(np.float64),
        np.nan_to_num(r.is_old_current).astype(np.int64).astype(np.float64),
    ]
    for between in (r.memory_recent, r.memory_first):
        log_minutes = np.log1p(days_since(r.time, between) * MINUTES_PER_DAY)
        columns += [zscore(log_minutes), session_zscore(log_minutes, r.session)]
    for between in (r.memory_recent, r.memory_first):
        log_trials = np.log1p(np.nan_to_num(between, nan=NO_SHOWING_TRIALS))
        columns += [zscore(log_trials), session_zscore(log_trials, r.session)]
    columns += [(r.run - 6) / 12, (r.trial - 30) / 60]
    return np.stack(columns, axis=1)


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


def memory_counts(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MEMORYRECENT and MEMORYFIRST of every trial from the image shown in each trial (in order):
    the stimulus trials between this showing and the most recent / first earlier one, NaN if none."""
    g = np.arange(images.size)
    prev, _ = neighbour_showings(images)
    _, first_showing, image_of = np.unique(images, return_index=True, return_inverse=True)
    seen = prev >= 0
    recent = np.where(seen, g - prev - 1, np.nan)
    first = np.where(seen, g - first_showing[image_of.ravel()] - 1, np.nan)
    return recent, first


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
