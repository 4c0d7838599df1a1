"""Model soups over registered checkpoints, streaming: about two state dicts in memory, not ten.

* uniform: the element-wise mean of all checkpoints.
* greedy: checkpoints sorted by their validation score, best first; each is added to the running
  average only if that improves the selection score. Selection and the reported score use
  different data (``evaluate`` returns both), so the reported score is not biased by the choice,
  and the best checkpoint is counted once (mem-spec 5.7). ``best_twice`` gives the reference's
  loop instead (mem-spec 4.2): it starts from the best checkpoint with a score of 0 and tries every
  checkpoint from the best on, so the best one enters the average twice.

Every checkpoint is read through :func:`memq.checkpoints.load_verified`: bytes that do not hash to
the registered sha256 are never averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from memq.job import load_verified

StateDict = dict[str, Any]


def _accumulate(total: StateDict | None, state: StateDict, weight: float) -> StateDict:
    """total + weight * state, in float32 (float64 sums buy nothing for ten checkpoints)."""
    if total is None:
        return {k: v.float() * weight for k, v in state.items()}
    if total.keys() != state.keys():
        missing = sorted(set(total) ^ set(state))[:3]
        raise ValueError(f"checkpoints disagree on their keys (e.g. {missing})")
    for k, v in state.items():
        total[k].add_(v.float(), alpha=weight)
    return total


def uniform(rows: Sequence[dict[str, Any]], load: Callable[[dict[str, Any]], StateDict] = load_verified,
            ) -> StateDict:
    """The mean of the checkpoints in ``rows`` (registry rows), loaded one at a time."""
    if not rows:
        raise ValueError("no checkpoints to average")
    total: StateDict | None = None
    for row in rows:
        total = _accumulate(total, load(row), 1.0 / len(rows))
    assert total is not None
    return total


def _mix(soup: StateDict, state: StateDict, n: int) -> None:
    """soup <- (n * soup + state) / (n + 1), in place."""
    for k, v in soup.items():
        v.mul_(n / (n + 1)).add_(state[k].float(), alpha=1 / (n + 1))


def _unmix(soup: StateDict, state: StateDict, n: int) -> None:
    """Undo :func:`_mix` (exact up to float32 rounding)."""
    for k, v in soup.items():
        v.sub_(state[k].float(), alpha=1 / (n + 1)).mul_((n + 1) / n)


@dataclass
class GreedyResult:
    state: StateDict
    members: list[int]  # checkpoint ids in the soup, in the order they joined
    selection_score: float
    reported_score: float
    trace: list[dict[str, Any]] = field(default_factory=list)


def greedy(rows: Sequence[dict[str, Any]], evaluate: Callable[[StateDict], tuple[float, float]],
           load: Callable[[dict[str, Any]], StateDict] = load_verified, *, best_twice: bool = False,
           ) -> GreedyResult:
    """Greedy soup: ``evaluate(state) -> (selection score, reported score)``, higher is better.

    ``members`` lists the best checkpoint twice when ``best_twice`` counted it twice.
    """
    ranked = sorted(rows, key=lambda r: (-(r["metric"] if r["metric"] is not None else float("-inf")), r["id"]))
    if not ranked:
        raise ValueError("no checkpoints to average")
    soup = {k: v.float() for k, v in load(ranked[0]).items()}
    members = [ranked[0]["id"]]
    if best_twice:
        best, reported, trace, candidates = 0.0, float("nan"), [], ranked
    else:
        best, reported = evaluate(soup)
        trace = [{"checkpoint": ranked[0]["id"], "selection": best, "reported": reported, "kept": True}]
        candidates = ranked[1:]
    for row in candidates:
        # Try the checkpoint in place and take it out again if it does not help: the soup and
        # the one checkpoint under trial are all that is in memory.
        n, state = len(members), load(row)
        _mix(soup, state, n)
        score, held_out = evaluate(soup)
        kept = score > best
        trace.append({"checkpoint": row["id"], "selection": score, "reported": held_out, "kept": kept})
        if kept:
            best, reported = score, held_out
            members.append(row["id"])
        else:
            _unmix(soup, state, n)
        del state
    if best_twice and len(members) == 1:  # no candidate scored above 0: the best checkpoint alone
        reported = evaluate(soup)[1]
    return GreedyResult(soup, members, best, reported, trace)
