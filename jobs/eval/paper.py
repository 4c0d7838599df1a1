"""The ablation table of the Mem README, as published (facts, not measurements of ours).

Source: README.md of huzeyann/MemoryEncodingModel (the table under the abstract; the paper,
arXiv:2308.01175, has the same). Scores on the Algonauts 2023 challenge test set, all 8 subjects:
``r`` and ``r2`` on the private leaderboard, ``score`` on the public one. Inputs: ``frames`` the
images seen (T=0 alone, or with the 32 before it), and the condition vector's column sets, M
(memory), B (answer), T (time) - jobs/mem/ablation.py names them.

``group`` is the group of grids/whole-brain.yaml that trains the row's single model; the two
ensemble rows come from ensembles that grid does not train (None).
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "README.md of huzeyann/MemoryEncodingModel (Algonauts 2023 test set, 8 subjects)"


@dataclass(frozen=True)
class PaperRow:
    method: str
    ensemble: bool
    frames: str
    memory: bool  # M columns
    answer: bool  # B columns
    time: bool  # T columns
    r: float  # private leaderboard
    r2: float  # private leaderboard
    score: float  # public leaderboard
    group: str | None

    @property
    def label(self) -> str:
        return f"{self.method} (ensemble)" if self.ensemble else self.method


PAPER_ROWS: tuple[PaperRow, ...] = (
    PaperRow("Full Mem", True, "T=-32:0", True, True, True, 0.416, 0.195, 70.85, None),
    PaperRow("Full Mem", False, "T=-32:0", True, True, True, 0.398, 0.180, 66.80, "full"),
    PaperRow("w/o time", False, "T=-32:0", True, True, False, 0.400, 0.182, 66.09, "wo-time"),
    PaperRow("w/o answer", False, "T=-32:0", True, False, True, 0.392, 0.176, 64.92, "wo-answer"),
    PaperRow("w/o memC", False, "T=-32:0", False, True, True, 0.394, 0.177, 67.02, "wo-memC"),
    PaperRow("w/o memI", False, "T=0", True, True, True, 0.363, 0.155, 62.65, "wo-memI"),
    PaperRow("w/o memIC", False, "T=0", False, True, True, 0.363, 0.156, 62.24, "wo-memIC"),
    PaperRow("Baseline", False, "T=0", False, False, False, 0.332, 0.135, 58.82, "baseline"),
    PaperRow("Baseline", True, "T=0", False, False, False, 0.341, 0.141, 61.39, None),
)
