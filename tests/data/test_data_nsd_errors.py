"""Bad NSD / Algonauts inputs: each gives one line `error: FILE: what (hint)`, exit 2, and no output."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel
import numpy as np
import pytest
import scipy.io

from jobs.data.layout import open_subject
from tests.data.nsd_fake import FakeNsd, write_fake_nsd, write_responses


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> FakeNsd:
    """subj02 only, 4 sessions (one with betas), 100 vertices per hemisphere."""
    return write_fake_nsd(tmp_path_factory.mktemp("small"), {"subj02": 4}, n_vertices=100, seed=3)


@contextmanager
def mutated(path: Path, change: Callable[[Path], None]) -> Iterator[None]:
    """``change(path)`` for the duration of the block, then the original file back."""
    backup = path.with_name(path.name + ".orig")
    shutil.copy2(path, backup)
    try:
        change(path)
        yield
    finally:
        backup.replace(path)


def _responses(tree: FakeNsd, **changes: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        columns = dict(tree.subjects["subj02"].responses)
        for name, fn in changes.items():
            columns[name] = fn(columns[name].copy())
        n = min(len(v) for v in columns.values())
        write_responses(path, {k: v[:n] for k, v in columns.items()})

    return change


def _design(**changes: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        mat = scipy.io.loadmat(path)
        scipy.io.savemat(
            path, {k: changes.get(k, lambda v: v)(mat[k]) for k in ("masterordering", "subjectim", "stimpattern")}
        )

    return change


def _mgh(data: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        nibabel.save(nibabel.MGHImage(data(np.asarray(nibabel.load(path).dataobj)), np.eye(4)), path)

    return change


def _remove(path: Path) -> None:
    path.unlink()


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a matlab file at all" * 10)


def _all_nan_vertex(tree: FakeNsd) -> Callable[[np.ndarray], np.ndarray]:
    vertex = int(np.flatnonzero(tree.subjects["subj02"].challenge[0])[3])

    def change(data: np.ndarray) -> np.ndarray:
        data = data.astype(np.float32)
        data[vertex] = np.nan
        return data

    return change


def _one_more_stimulus(stimpattern: np.ndarray) -> np.ndarray:
    changed = stimpattern.copy()
    changed.flat[np.flatnonzero(changed.ravel() == 0)[0]] = 1
    return changed


def _save(value: Callable[[], object]) -> Callable[[Path], None]:
    return lambda path: np.save(path, value(), allow_pickle=True)


def _test_png_outside_predict(path: Path) -> None:
    shutil.copy(next(path.glob("*.png")), path / "test-9999_nsd-00000.png")


def _cases(tree: FakeNsd) -> dict[str, tuple[Path, Callable[[Path], None], str]]:
    nsd, roi = tree.nsd_dir, tree.alg_dir / "subj02/roi_masks"
    responses = nsd / "nsddata/ppdata/subj02/behav/responses.tsv"
    design = nsd / "nsddata/experiments/nsd/nsd_expdesign.mat"
    betas = tree.betas_dir("subj02")
    return {
        "missing responses": (responses, _remove, "missing NSD behavioural responses"),
        "responses not whole sessions": (responses, _responses(tree, RT=lambda x: x[:-1]), "expected whole sessions"),
        "responses without a column": (
            responses,
            lambda p: p.write_text(p.read_text().replace("BUTTON", "BUTTONS", 1)),
            "no column BUTTON in the header",
        ),
        "responses out of order": (responses, _responses(tree, SESSION=lambda x: x[::-1]), "SESSION must run 1, 2"),
        "image differs from the design": (
            responses,
            _responses(tree, **{"73KID": lambda x: x + (np.arange(x.size) == 10)}),
            "73KID of trial 10 (session 1)",
        ),
        "too few sessions": (responses, _responses(tree, RT=lambda x: x[:2250]), "need more than the 3 held-out ones"),
        "design is not MATLAB": (design, _garbage, "not a readable MATLAB file"),
        "design for one subject": (design, _design(subjectim=lambda x: x[:1]), "subjectim has rows for 1 subjects"),
        "design is 2-d": (design, _design(stimpattern=lambda x: x.reshape(40, -1)), "stimpattern [40, 900]"),
        "design slots do not add up": (
            design,
            _design(stimpattern=_one_more_stimulus),
            "stimulus slots per session",
        ),
        "betas of another surface": (
            betas / "lh.betas_session01.mgh",
            _mgh(lambda d: np.concatenate([d, d[:1]])),
            "is [101, 1, 1, 750], expected [100, 1, 1, 750]",
        ),
        "betas missing": (betas / "rh.betas_session01.mgh", _remove, "missing b3 betas of session 1"),
        "a selected vertex without data": (
            betas / "lh.betas_session01.mgh",
            _mgh(_all_nan_vertex(tree)),
            "1 selected voxels are NaN in every trial",
        ),
        "ncsnr of another surface": (betas / "rh.ncsnr.mgh", _mgh(lambda d: d[:50]), "expected [100, 1, 1, 1]"),
        "mask not binary": (
            roi / "lh.all-vertices_fsaverage_space.npy",
            _save(lambda: np.full(100, 2.0)),
            "expected [0, 1]",
        ),
        "mask pickled": (roi / "rh.all-vertices_fsaverage_space.npy", _save(lambda: np.array([{}])), "not a readable"),
        "stream labels per vertex": (
            roi / "lh.streams_challenge_space.npy",
            _save(lambda: np.zeros(100)),
            "expected one per challenge vertex",
        ),
        "stream names": (
            roi / "mapping_streams.npy",
            _save(lambda: np.array({k: v for k, v in enumerate(["u", "ventral", "early"] + ["x"] * 5)}, dtype=object)),
            "expected 1..7 = early, midventral",
        ),
        "sphere missing": (nsd / "nsddata/freesurfer/fsaverage/surf/rh.sphere", _remove, "missing FreeSurfer"),
        "test image outside the held-out sessions": (
            tree.alg_dir / "subj02/test_split/test_images",
            _test_png_outside_predict,
            "test images are not shown in the held-out sessions",
        ),
    }


CASES = [
    "missing responses", "responses not whole sessions", "responses without a column", "responses out of order",
    "image differs from the design", "too few sessions", "design is not MATLAB", "design for one subject",
    "design is 2-d", "design slots do not add up", "betas of another surface", "betas missing",
    "a selected vertex without data", "ncsnr of another surface", "mask not binary", "mask pickled",
    "stream labels per vertex", "stream names", "sphere missing", "test image outside the held-out sessions",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_error(tree: FakeNsd, tmp_path: Path, memq, prepare_cmd, case: str) -> None:
    path, change, message = _cases(tree)[case]
    if path.is_dir():  # a directory case: work on a copy of the tree's directory
        shutil.copytree(path, tmp_path / "saved")
        change(path)
        try:
            ran = memq(*prepare_cmd(tree, tmp_path / "out", "--no-images", "--subjects", "2"))
        finally:
            shutil.rmtree(path)
            shutil.copytree(tmp_path / "saved", path)
    else:
        with mutated(path, change):
            ran = memq(*prepare_cmd(tree, tmp_path / "out", "--no-images", "--subjects", "2"))
    assert ran.code == 2, ran.err + ran.out
    line = ran.err.strip()
    assert "\n" not in line and line.startswith(f"error: {path}") and message in line, line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_bad_options(tree: FakeNsd, tmp_path: Path, memq, prepare_cmd) -> None:
    for option, message in ((("--beta", "b9"), "beta version 'b9' is not known"),
                            (("--space", "func1mm"), "space 'func1mm' is not supported"),
                            (("--subjects", "subjX"), "'subjX' is not a subject"),
                            (("--subjects", "3"), "missing NSD behavioural responses")):  # fmt: skip
        ran = memq(*prepare_cmd(tree, tmp_path / "out", *option))
        assert ran.code == 2 and message in ran.err and ran.err.count("\n") == 1, ran.err
    assert not (tmp_path / "out").exists()


def test_scattered_nan_betas_become_zero(tree: FakeNsd, tmp_path: Path, memq, prepare_cmd) -> None:
    path = tree.betas_dir("subj02") / "rh.betas_session01.mgh"
    original = np.asarray(nibabel.load(path).dataobj)[:, 0, 0, :].astype(np.float32)
    holes = np.random.default_rng(0).random(original.shape) < 0.01

    def with_holes(data: np.ndarray) -> np.ndarray:
        return np.where(holes[:, None, None, :], np.nan, data.astype(np.float32))

    with mutated(path, _mgh(with_holes)):
        ran = memq(*prepare_cmd(tree, tmp_path, "--no-images"))
    assert ran.code == 0, ran.err
    with open_subject(tmp_path / "subj02.h5") as f:
        vertices, betas = f.voxel_indices(), f.betas[()].astype(np.float64)
    rh = vertices >= 100
    data = np.where(holes, 0.0, original)[vertices[rh] - 100].T
    np.testing.assert_allclose(betas[:, rh], (data - data.mean(0)) / data.std(0), atol=5e-3)
