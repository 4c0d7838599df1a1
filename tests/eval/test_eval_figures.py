"""The report's figures, rendered to PNG through Agg, and its page parts: bars that show differences,
shared y-ranges where panels are compared, readable legends, paths and numbers as the page shows them."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from PIL import Image

from jobs.eval.page import Page
from jobs.eval.plots import MAX_LEGEND, Curve, curves_figure, save, schemes_figure, score_figure
from jobs.eval.report import ReportInputs, job_label
from memq.job import UserError

matplotlib.use("Agg")


def rendered(figure: Figure, path: Path) -> Figure:
    """``figure`` saved as a real PNG (and so laid out and drawn)."""
    save(figure, path)
    with Image.open(path) as image:
        assert min(image.size) > 200
    return figure


def bar_heights(ax: Axes) -> list[list[float]]:
    return [[bar.get_height() for bar in c] for c in ax.containers if isinstance(c, BarContainer)]


def visible_share(difference: float, ax: Axes) -> float:
    """How much of the panel's height a difference of ``difference`` takes."""
    low, high = ax.get_ylim()
    return difference / (high - low)


ALONE = {"all-0": 0.310, "all-1": 0.305, "A": 0.300, "W": 0.296}
CUMULATIVE = [("all-0", 0.310), ("all-1", 0.318), ("A", 0.322), ("W", 0.325)]


def test_scheme_bars_show_differences_to_the_best_scheme_on_one_range(tmp_path: Path) -> None:
    figure = rendered(schemes_figure(ALONE, CUMULATIVE), tmp_path / "schemes.png")
    left, right = figure.axes
    assert left.get_ylim() == right.get_ylim()
    np.testing.assert_allclose(bar_heights(left)[0], [r - 0.310 for r in ALONE.values()])
    np.testing.assert_allclose(right.lines[0].get_ydata(), [r - 0.310 for _, r in CUMULATIVE])
    assert visible_share(0.005, left) > 0.1  # all-0 vs all-1 (at 0.31 r, a bar from 0 shows 0.005 as 1.5%)
    assert figure.get_suptitle() == "val2 r relative to the best single scheme, all-0 (r = 0.3100)"
    assert all(re.fullmatch(r"[+-]0\.\d{4}", t.get_text()) for t in left.get_yticklabels())  # r: 4 decimals


def entry(median: float | None, mean: float | None, n: int = 100) -> dict[str, float | int | None]:
    return {"n": n, "median": median, "mean": mean}


SCORED = {
    "all": entry(61.0, 58.0, 300),
    "subjects": {"subj01": {"all": entry(60.0, 57.5)}, "subj02": {"all": entry(62.0, 58.5)}},
    "rois": {"E": entry(70.0, 66.0), "MV": entry(55.0, 54.0), "P": entry(None, None, 0)},
}


def test_score_bars_show_differences_to_all_vertices_on_one_range(tmp_path: Path) -> None:
    figure = rendered(score_figure(SCORED), tmp_path / "scores.png")
    subjects, rois = figure.axes
    assert subjects.get_ylim() == rois.get_ylim()
    assert bar_heights(subjects) == [[-1.0, 1.0], [-0.5, 0.5]]  # median, mean minus all vertices'
    assert bar_heights(rois)[0][:2] == [9.0, -6.0] and np.isnan(bar_heights(rois)[0][2])  # P: no vertices
    assert visible_share(2.0, subjects) > 0.05  # subj01 vs subj02 (from 0 to 118, 2 points were 1.7%)
    assert figure.get_suptitle() == "test score relative to all vertices of all subjects: median 61.0%, mean 58.0%"


def job(job_id: int, rois: list[str] | None = None, repeat: int = 0) -> dict[str, object]:
    return {"id": job_id, "params": {"DATASET.ROIS": rois} if rois else {}, "repeat": repeat}


def test_job_labels_say_what_each_job_models() -> None:
    assert job_label(job(3)) == "job 3: whole brain (repeat 0)"
    assert job_label(job(12, ["E", "F"])) == "job 12: ROIs E, F"
    assert job_label(job(4, ["V"])) == "job 4: ROI V"
    assert job_label(job(7, ["V"], repeat=1)) == "job 7: ROI V (repeat 1)"


def curves(labels: list[str], level: float) -> list[Curve]:
    epochs = np.arange(6)
    return [Curve(label, epochs, level + 0.01 * k + 0.02 * epochs) for k, label in enumerate(labels)]


def test_curve_panels_share_one_range_and_legends_keep_clear_of_the_lines(tmp_path: Path) -> None:
    labels = [job_label(job(1)), job_label(job(2, repeat=1)), job_label(job(3, ["E", "MV"]))]
    many = [job_label(job(10 + k, ["V"])) for k in range(MAX_LEGEND + 1)]
    groups = {"all": curves(labels[:2], 0.3), "A": curves(labels[2:], 0.05), "R1": curves(many, 0.1)}
    figure = rendered(curves_figure(groups), tmp_path / "curves.png")
    panels = figure.axes[:3]
    assert len({ax.get_ylim() for ax in panels}) == 1
    for ax, expected in zip(panels[:2], (labels[:2], labels[2:]), strict=True):
        legend = ax.get_legend()
        assert [t.get_text() for t in legend.get_texts()] == expected
        box = legend.get_window_extent()
        assert not box.overlaps(ax.bbox) and not box.overlaps(ax.xaxis.get_tightbbox())  # below the x label
        assert figure.bbox.contains(box.x0, box.y0) and figure.bbox.contains(box.x1, box.y1)  # not cut
    assert panels[2].get_legend() is None  # more lines than colours
    notes = [t.get_text() for t in panels[2].texts]
    assert notes == [f"{MAX_LEGEND + 1} jobs: too many lines for a legend (the Jobs table lists them)"]


def test_paths_on_the_page_are_never_absolute(tmp_path: Path) -> None:
    inputs = ReportInputs("g", tmp_path / "memq-root", [], tmp_path / "out")
    assert inputs.shown(tmp_path / "memq-root") == "memq-root"
    assert inputs.shown(tmp_path / "memq-root" / "data" / "truth") == "memq-root/data/truth"
    assert inputs.shown(tmp_path / "elsewhere" / "nsd") == "nsd"
    problem = UserError("no such file", where=str(tmp_path / "elsewhere" / "nsd" / "subj01.h5"))
    assert inputs.problem(problem) == "subj01.h5: no such file"


def test_table_cells_count_with_separators_and_take_no_raw_floats() -> None:
    page = Page("t")
    page.table(["what", "n"], [["vertices", 10_242], ["none", None]])
    assert "<td>vertices</td><td>10,242</td>" in page.html() and "<td>none</td><td>-</td>" in page.html()
    with pytest.raises(TypeError, match="format it first"):
        page.table(["r"], [[0.31]])  # type: ignore[list-item]
