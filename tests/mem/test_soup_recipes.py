"""Streaming soups: uniform mean, greedy selection on one score reported on another, verified loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jobs.mem.ensemble.soup_recipes import greedy, uniform
from memq.checkpoints import ChecksumError, sha256_file


def saved(tmp_path: Path, n: int = 5) -> tuple[list[dict], dict[int, dict[str, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(0)
    states, rows = {}, []
    for i in range(n):
        state = {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(3, generator=gen).half()}
        path = tmp_path / f"c{i}.pt"
        torch.save(state, path)
        states[i] = state
        rows.append({"id": i, "metric": [0.1, 0.5, 0.3, 0.2, 0.4][i % 5], "path": str(path), "synced_path": None,
                     "size": path.stat().st_size, "sha256": sha256_file(path)})
    return rows, states


def test_uniform_soup_is_the_mean(tmp_path: Path) -> None:
    rows, states = saved(tmp_path)
    soup = uniform(rows)
    for key in ("w", "b"):
        expected = torch.stack([states[i][key].double() for i in states]).mean(0)
        assert torch.allclose(soup[key].double(), expected, atol=1e-3 if key == "b" else 1e-6)


def test_greedy_selects_on_one_score_reports_another_and_counts_the_best_once(tmp_path: Path) -> None:
    rows, states = saved(tmp_path)
    target = (states[1]["w"] + states[4]["w"]) / 2  # the best two, averaged once each
    calls = []

    def evaluate(state: dict[str, torch.Tensor]) -> tuple[float, float]:
        calls.append(state["w"].clone())
        return -float((state["w"] - target).pow(2).sum()), 42.0

    result = greedy(rows, evaluate)
    assert result.members == [1, 4]  # ranked by metric: 1 (0.5) first, then 4 (0.4) joins
    assert torch.allclose(result.state["w"], target, atol=1e-6)
    assert torch.allclose(calls[0], states[1]["w"])  # starts from the best checkpoint alone
    assert result.reported_score == 42.0 and len(result.trace) == 5
    assert [t["kept"] for t in result.trace] == [True, True, False, False, False]


def test_greedy_best_twice_is_the_reference_loop(tmp_path: Path) -> None:
    """From a score of 0, every checkpoint from the best on is tried: the best first joins itself."""
    rows, states = saved(tmp_path)
    target = (2 * states[1]["w"] + states[4]["w"]) / 3
    calls = []

    def evaluate(state: dict[str, torch.Tensor]) -> tuple[float, float]:
        calls.append(state["w"].clone())
        score = 1.0 - float((state["w"] - target).pow(2).sum()) / 100
        return score, score

    result = greedy(rows, evaluate, best_twice=True)
    assert result.members == [1, 1, 4]
    assert torch.allclose(result.state["w"], target, atol=1e-6)
    assert torch.allclose(calls[0], states[1]["w"])  # the best mixed with itself is still the best
    assert [t["checkpoint"] for t in result.trace] == [1, 4, 2, 3, 0]
    assert [t["kept"] for t in result.trace] == [True, True, False, False, False]
    assert result.selection_score == result.reported_score == max(t["selection"] for t in result.trace)

    nothing_positive = greedy(rows, lambda state: (-1.0, -2.0), best_twice=True)
    assert nothing_positive.members == [1] and nothing_positive.selection_score == 0.0
    assert nothing_positive.reported_score == -2.0  # of the best checkpoint alone


def test_a_corrupted_checkpoint_is_never_averaged(tmp_path: Path) -> None:
    rows, _ = saved(tmp_path)
    path = Path(rows[2]["path"])
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="sha256"):
        uniform(rows)
