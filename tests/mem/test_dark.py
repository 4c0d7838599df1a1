"""LOSS.DARK: the reference's blend schedule, the teacher-prediction store, and the missing-teacher
checks at submit and at job start (the distillation itself: tests/ensemble/test_distill.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from jobs.data.dark import dark_dir
from jobs.mem.build import check_inputs
from jobs.mem.config import ConfigError, load_config, tiny
from jobs.mem.dark import TeacherRows, dark_weights, publish, read_teacher
from jobs.mem.ensemble.artifacts import write_index, write_manifest, write_subject, write_subject_rows
from jobs.mem.train.lit import MemLit
from jobs.mem.validate import validate_train_grid
from memq.job import ChecksumError, PermanentError


def test_off_by_default_with_the_references_100_epochs() -> None:
    dark = load_config().LOSS.DARK  # reference config.py: _C.LOSS.DARK.USE False, MAX_EPOCH 100
    assert (dark.USE, dark.MAX_EPOCH, load_config().DATASET.DARK) == (False, 100, None)


# (epoch, target weight, teacher weight) of the reference's gt_weight and darkness_weight with
# MAX_EPOCH 100, worked out by hand: e/100 capped at 1, and 1 - e/100 floored at 0
REFERENCE_SCHEDULE = [(0, 0.0, 1.0), (1, 0.01, 0.99), (25, 0.25, 0.75), (50, 0.5, 0.5), (99, 0.99, 0.01),
                      (100, 1.0, 0.0), (101, 1.0, 0.0), (499, 1.0, 0.0)]


@pytest.mark.parametrize(("epoch", "target", "teacher"), REFERENCE_SCHEDULE)
def test_blend_weights_are_the_references(epoch: int, target: float, teacher: float) -> None:
    assert dark_weights(epoch, 100) == (pytest.approx(target, abs=1e-12), pytest.approx(teacher, abs=1e-12))


def test_distilling_needs_a_teacher_name() -> None:
    with pytest.raises(ConfigError, match=re.escape("LOSS.DARK.USE needs DATASET.DARK")):
        load_config({"LOSS.DARK.USE": True})
    with pytest.raises(ConfigError, match=re.escape("DATASET.DARK")):
        load_config({"LOSS.DARK.USE": True, "DATASET.DARK": "../elsewhere"})


def _prediction_dir(directory: Path, values: dict[str, np.ndarray], trials: dict[str, np.ndarray],
                    voxels: dict[str, np.ndarray]) -> None:
    """A finished mem.predict output directory with these rows."""
    entries = {s: write_subject(directory, s, v) for s, v in values.items()}
    index = write_index(directory, {s: (trials[s], voxels[s]) for s in values})
    write_manifest(directory, {"source_job": 1, "grid": "g", "recipe": "greedy", "split": "train",
                               "soup_sha256": "0" * 64, "index": index, "subjects": entries})


def test_published_store_is_read_back_verified_and_aligned(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    trials = {"subj01": np.array([3, 8, 11, 20]), "subj02": np.array([0, 1])}
    voxels = {"subj01": np.arange(6), "subj02": np.array([4, 0, 2])}  # an ROI model's columns
    values = {s: rng.standard_normal((len(trials[s]), len(voxels[s]))).astype(np.float16) for s in trials}
    _prediction_dir(tmp_path / "pred", values, trials, voxels)
    data_dir = tmp_path / "data"
    target = publish(tmp_path / "pred", data_dir, "teach", "train")
    assert target == data_dir / "dark" / "teach" / "train"
    parts = read_teacher(data_dir, "teach")
    # whole-brain student: trials in another order, every voxel
    rows = TeacherRows.select(parts["subj01"], np.array([20, 3]), None)
    np.testing.assert_array_equal(rows.row(0), values["subj01"][3].astype(np.float32))
    np.testing.assert_array_equal(rows.row(1), values["subj01"][0].astype(np.float32))
    # an ROI student: voxel positions 2 and 4 are the teacher's columns 2 and 0
    rows = TeacherRows.select(parts["subj02"], np.array([1]), np.array([2, 4]))
    np.testing.assert_array_equal(rows.row(0), values["subj02"][1, [2, 0]].astype(np.float32))
    with pytest.raises(ValueError, match=r"no teacher prediction for trials \[5\]"):
        TeacherRows.select(parts["subj01"], np.array([3, 5]), None)
    with pytest.raises(ValueError, match=r"the teacher lacks voxels \[1\]"):
        TeacherRows.select(parts["subj02"], np.array([0]), np.array([1]))
    manifest = json.loads((target / "manifest.json").read_text())
    corrupt = target / manifest["subjects"]["subj02"]["file"]
    corrupt.write_bytes(corrupt.read_bytes()[:-2] + b"\x00\x01")
    with pytest.raises(ChecksumError, match=re.escape("subj02.npy: does not match its manifest")):
        read_teacher(data_dir, "teach")
    publish(tmp_path / "pred", data_dir, "teach", "train")  # a rerun repairs the copy
    assert read_teacher(data_dir, "teach")["subj02"].sha256 == manifest["subjects"]["subj02"]["sha256"]


def test_a_split_written_a_batch_at_a_time_has_np_saves_bytes(tmp_path: Path) -> None:
    """mem.predict streams its rows (a real train split does not fit in memory at once)."""
    values = np.random.default_rng(1).standard_normal((7, 5)).astype(np.float32)
    np.save(tmp_path / "expected.npy", values.astype(np.float16))
    entry = write_subject_rows(tmp_path, "subj01", (7, 5), [values[:3], values[3:6], values[6:]])
    assert (tmp_path / "subj01.npy").read_bytes() == (tmp_path / "expected.npy").read_bytes()
    assert entry["size"] == (tmp_path / "expected.npy").stat().st_size
    with pytest.raises(ValueError, match="6 rows written, expected 7"):
        write_subject_rows(tmp_path, "subj02", (7, 5), [values[:6]])
    assert not (tmp_path / "subj02.npy").exists() and not list(tmp_path.glob(".*.tmp"))


def _student(data_dir: Path) -> dict[str, Any]:
    return {**tiny(), "DATASET.DIR": str(data_dir), "LOSS.DARK.USE": True, "DATASET.DARK": "xvbaa"}


def test_a_student_without_its_teacher_fails_at_submit_and_at_start(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    missing = f"DATASET.DARK xvbaa: no teacher predictions in {dark_dir(tmp_path / 'data', 'xvbaa', 'train')}"
    student = {"group": "student", "kind": "mem.train", "key": "s" * 32, "params": _student(tmp_path / "data")}
    group, problem = validate_train_grid([student], {"student": set()})
    assert group == "student" and problem.startswith(missing) and "\n" not in problem
    assert "the `teacher` group of grids/mem-light.yaml" in problem
    with pytest.raises(PermanentError) as error:
        check_inputs(load_config(_student(tmp_path / "data")), tmp_path)
    assert str(error.value).startswith(missing)
    elsewhere = {**student, "params": _student(tmp_path / "elsewhere")}
    assert validate_train_grid([elsewhere], {"student": set()}) is None  # not visible at submit: the job checks


@pytest.mark.filterwarnings("ignore:.*reference is not registered on the model yet")  # no trainer: log is a no-op
def test_an_all_zero_teacher_row_is_replaced_by_the_target(build: Any, tiny_overrides: dict[str, Any]) -> None:
    """The reference's rule for a missing teacher file (read as zeros): that sample's loss is
    against its target. Epoch 0 (no trainer yet): the teacher's weight is 1."""
    config = load_config({**tiny_overrides, "LOSS.DARK.USE": True, "DATASET.DARK": "t"})
    lit = MemLit(config, build(config))
    rng = np.random.default_rng(3)
    y, teacher = (rng.standard_normal((3, 300)).astype(np.float32) for _ in range(2))
    pred = rng.standard_normal((3, 3)).astype(np.float32)  # of the selected voxels
    teacher[1] = 0.0
    samples = {"y": torch.from_numpy(y), "dark": torch.from_numpy(teacher)}
    loss = lit._voxel_loss("subj01", torch.from_numpy(pred), samples, torch.tensor([5, 0, 299])).numpy()

    def smooth_l1(d: np.ndarray) -> np.ndarray:
        d = np.abs(d)
        return np.where(d < 0.01, 0.5 * d * d / 0.01, d - 0.005)

    columns = [5, 0, 299]
    expected = smooth_l1(pred - teacher[:, columns])
    expected[1] = smooth_l1(pred[1] - y[1, columns])
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
