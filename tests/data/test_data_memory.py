from __future__ import annotations

import numpy as np
import pytest

from jobs.data.behavior import behavior_table, neighbour_showings
from jobs.data.layout import FILL_ROW
from jobs.data.memory import local_prev_behavior_rows, memory_index_from_design, prev_behavior_rows
from jobs.data.synth_subject import trial_design


@pytest.fixture(scope="module")
def design() -> np.ndarray:
    return trial_design(np.random.default_rng(5), np.arange(100, 900), n_sessions=2, repeats=2)


def test_memory_windows_follow_slots_within_runs(design: np.ndarray) -> None:
    table = memory_index_from_design(design)
    assert table.shape == (1500, 33) and table.dtype == np.int32
    g = 0
    for session in range(2):
        for run in range(12):
            for slot in range(75):
                if design[session, run, slot] == -1:
                    continue
                expected = [design[session, run, s] if s >= 0 else -1 for s in range(slot - 32, slot + 1)]
                assert table[g].tolist() == expected
                g += 1
    assert g == 1500


def test_first_trial_of_a_run_sees_only_blanks(design: np.ndarray) -> None:
    table = memory_index_from_design(design)
    firsts = np.r_[0, np.flatnonzero(np.diff(np.repeat(np.arange(24), (design != -1).sum(2).ravel()))) + 1]
    assert len(firsts) == 24
    assert np.all(table[firsts, :32] == -1)  # the window never reaches into the previous run
    assert np.all(table[:, 32] != -1)


def test_design_needs_750_stimuli_per_session(design: np.ndarray) -> None:
    broken = design.copy()
    broken[1, 0, np.flatnonzero(broken[1, 0] != -1)[0]] = -1
    with pytest.raises(ValueError, match=r"stimulus slots \[750, 749\]"):
        memory_index_from_design(broken)


def test_prev_behavior_rows_use_global_trials() -> None:
    # one run: trials 0..4 in slots 0, 1, 3, 4, 6 (blanks at 2 and 5)
    run = np.full(75, -1)
    run[[0, 1, 3, 4, 6]] = [10, 11, 12, 13, 14]
    table = np.vstack([np.full(33, -1)] * 5)
    for g, slot in enumerate([0, 1, 3, 4, 6]):
        table[g, 32 - slot :] = run[: slot + 1]
    rows = prev_behavior_rows(table)
    fill = 5
    assert rows[4, :7].tolist() == [fill, 3, 2, fill, 1, 0, fill]  # T=-1 blank, T=-2 trial 3, ...
    assert rows[1, :2].tolist() == [0, fill]
    assert np.all(rows[0] == fill)
    # The trial actually shown at T=-2 of trial 4 is trial 3. In a split holding trials [4, 1], the
    # reference's local indexing (switch PREV_BHVS local) counts back from trial 4's position in the
    # sorted split, 1: its first non-blank slot (T=-2) gets position 1 - 1 = 0, trial 1; the next
    # (T=-3) position -1, which wraps to the split's last trial, 4; blank slots get that last trial too.
    local = local_prev_behavior_rows(table, np.array([4, 1]))
    assert local.shape == (2, 32) and local.dtype == np.int64
    assert local[1, :7].tolist() == [4, 1, 4, 4, 1, 4, 4]  # T=-1 blank, T=-2 trial 1 (not 3), ...
    assert np.all(local[1, 7:] == 4)
    assert np.all(local[0] == 4)  # trial 1: T=-1 (trial 0) is position 0 - 1 -> the last one


def test_prev_behavior_rows_reject_inconsistent_tables(design: np.ndarray) -> None:
    table = memory_index_from_design(design)
    table[10, 31] = 99999  # T=-1 no longer shows trial 9's image
    with pytest.raises(ValueError, match="inconsistent"):
        prev_behavior_rows(table)


def test_prev_behavior_rows_on_real_design(design: np.ndarray) -> None:
    table = memory_index_from_design(design)
    rows = prev_behavior_rows(table)
    assert rows.shape == (1500, 32)
    for g in range(0, 1500, 37):
        k = 0
        for t in range(32):  # T = -(t+1) is entry 31 - t
            if table[g, 31 - t] == -1:
                assert rows[g, t] == 1500
            else:
                k += 1
                assert rows[g, t] == g - k
                assert table[g - k, 32] == table[g, 31 - t]


def test_neighbour_showings() -> None:
    prev, nxt = neighbour_showings(np.array([5, 7, 5, 9, 5, 7]))
    assert prev.tolist() == [-1, -1, 0, -1, 2, 1]
    assert nxt.tolist() == [2, 5, 4, -1, -1, -1]


def test_behavior_table_repeat_context() -> None:
    base = np.arange(4 * 21, dtype=np.float32).reshape(4, 21)
    design_images = np.array([5, 7, 5, 9, 7, 9])  # trials 4 and 5 are in a session never completed
    table = behavior_table(base, design_images)
    p = [0, 1, 2, 11, 12, 15, 16]
    fill = FILL_ROW[:21][p]
    assert table.shape == (5, 35) and table.dtype == np.float32
    np.testing.assert_array_equal(table[:, :21][:4], base)
    np.testing.assert_array_equal(table[-1], FILL_ROW)
    np.testing.assert_array_equal(table[0, 21:28], fill)  # no earlier showing
    np.testing.assert_array_equal(table[0, 28:], base[2, p])  # next showing: trial 2
    np.testing.assert_array_equal(table[2, 21:28], base[0, p])
    np.testing.assert_array_equal(table[2, 28:], fill)
    np.testing.assert_array_equal(table[1, 28:], fill)  # next showing (trial 4) never completed
    np.testing.assert_array_equal(table[3, 28:], fill)
