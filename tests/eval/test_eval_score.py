"""`memq score`: the Algonauts 2023 formula against a plain reference, the TRUTH reader's errors,
and a synthetic submission scored end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import jobs.data.truth
from jobs.data.synth import SynthInfo
from jobs.data.truth import STREAM_NAMES, HemiTruth, SubjectTruth, read_truth, synthetic_mark, write_truth
from jobs.eval.score import score_dirs, scores_json, vertex_scores
from memq.job import UserError

from .conftest import planted_test_signal, write_submission


def reference_score(pred: np.ndarray, target: np.ndarray, ncsnr: np.ndarray, repeats: np.ndarray) -> np.ndarray:
    """mem-spec 4.5 written out vertex by vertex, with A, B and C counted literally."""
    a, b, c = (int(np.sum(repeats == n)) for n in (3, 2, 1))
    assert a + b + c == len(repeats)
    out = np.empty(pred.shape[1])
    for v in range(pred.shape[1]):
        p, t = pred[:, v], target[:, v]
        r = 0.0 if np.ptp(p) == 0 or np.ptp(t) == 0 else float(np.corrcoef(p, t)[0, 1])
        r = max(r, 0.0)
        nc = ncsnr[v] ** 2 / (ncsnr[v] ** 2 + (a / 3 + b / 2 + c / 1) / (a + b + c))
        if nc == 0:
            nc = 1e-14
        out[v] = min(r**2 / nc, 1.0) * 100
    return out


def random_case(rng: np.random.Generator, n_test: int = 40, n: int = 60) -> tuple[np.ndarray, ...]:
    """Predictions from perfect to anti-correlated, ncsnr from 0 to high, 1-3 repeats."""
    target = rng.standard_normal((n_test, n))
    weight = np.linspace(-1, 1, n)
    pred = weight * target + 0.7 * rng.standard_normal((n_test, n))
    pred[:, 0] = 5.0  # constant prediction: r = 0
    ncsnr = rng.uniform(0, 2, n)
    ncsnr[::7] = 0  # NC = 0
    repeats = rng.choice([1, 2, 3], n_test, p=[0.2, 0.3, 0.5])
    return pred, target, ncsnr, repeats


def test_vertex_scores_match_the_reference() -> None:
    rng = np.random.default_rng(7)
    for _ in range(5):
        pred, target, ncsnr, repeats = random_case(rng)
        expected = reference_score(pred, target, ncsnr, repeats)
        np.testing.assert_allclose(vertex_scores(pred, target, ncsnr, repeats), expected, rtol=1e-9, atol=1e-9)
        # the cases cover every branch: r < 0 (clipped), NC = 0 with r > 0 (capped), and plain ratios
        r = np.array([np.corrcoef(pred[:, v], target[:, v])[0, 1] for v in range(1, pred.shape[1])])
        assert np.any(r < 0) and np.any((ncsnr[1:] == 0) & (r > 0)) and np.any((expected > 0) & (expected < 100))


def _write_random_truth(directory: Path, rng: np.random.Generator, sizes: dict[str, int], n_test: int) -> None:
    repeats = rng.choice([1, 2, 3], n_test)
    hemis = {
        hemi: HemiTruth(rng.standard_normal((n_test, n)), rng.uniform(0, 2, n), rng.integers(0, 8, n))
        for hemi, n in sizes.items()
    }
    write_truth(directory, "subj01", SubjectTruth(hemis, repeats))


@pytest.fixture
def random_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A truth (subj01, labelled) and a submission for it (noisy copy of the truth)."""
    rng = np.random.default_rng(3)
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    _write_random_truth(truth, rng, {"lh": 30, "rh": 20}, n_test=25)
    (pred / "subj01").mkdir(parents=True)
    for hemi in ("lh", "rh"):
        fmri = np.load(truth / "subj01" / f"{hemi}_test_fmri.npy")
        np.save(pred / "subj01" / f"{hemi}_pred_test.npy", fmri + rng.standard_normal(fmri.shape))
    return pred, truth


def test_directories_are_scored_per_subject_hemisphere_and_roi(random_pair: tuple[Path, Path], cli) -> None:
    pred, truth = random_pair
    t = read_truth(truth, "subj01")
    per_hemi = {
        hemi: reference_score(
            np.load(pred / "subj01" / f"{hemi}_pred_test.npy").astype(np.float64), t.hemis[hemi].fmri,
            t.hemis[hemi].ncsnr, t.repeats,
        )
        for hemi in ("lh", "rh")
    }  # fmt: skip
    every = np.concatenate([per_hemi["lh"], per_hemi["rh"]])
    labels = np.concatenate([t.hemis["lh"].streams, t.hemis["rh"].streams])
    ran = cli("score", pred, "--truth", truth, "--json")
    assert ran.code == 0, ran.err
    result = json.loads(ran.out)
    assert result == scores_json(score_dirs(pred, truth))
    assert result["all"]["n"] == 50
    assert result["all"]["median"] == pytest.approx(np.median(every))
    assert result["all"]["mean"] == pytest.approx(every.mean())
    subject = result["subjects"]["subj01"]
    assert subject["lh"]["mean"] == pytest.approx(per_hemi["lh"].mean())
    assert subject["rh"]["median"] == pytest.approx(np.median(per_hemi["rh"]))
    assert list(result["rois"]) == list(STREAM_NAMES)
    for k, name in enumerate(STREAM_NAMES):
        expected = every[labels == k]
        assert result["rois"][name]["n"] == expected.size
        if expected.size:
            assert result["rois"][name]["mean"] == pytest.approx(expected.mean())
    table = cli("score", pred, "--truth", truth)
    assert table.code == 0
    assert "subj01 lh" in table.out and "ROI MV" in table.out and f"{np.median(every):.1f}%" in table.out


def _one_line_error(ran) -> str:  # type: ignore[no-untyped-def]
    assert ran.code == 2, (ran.out, ran.err)
    assert ran.err.startswith("error: ") and ran.err.count("\n") == 1, ran.err
    return ran.err


def test_shape_mismatch_is_a_user_error(random_pair: tuple[Path, Path], cli) -> None:
    pred, truth = random_pair
    lh = pred / "subj01" / "lh_pred_test.npy"
    np.save(lh, np.load(lh)[:, :-1])
    err = _one_line_error(cli("score", pred, "--truth", truth))
    assert f"{lh}: prediction is [25, 29] but the truth's lh_test_fmri.npy is [25, 30]" in err
    np.save(lh, np.load(lh)[:-2])
    assert "prediction is [23, 29]" in _one_line_error(cli("score", pred, "--truth", truth))


def test_subjects_missing_on_either_side(random_pair: tuple[Path, Path], cli) -> None:
    pred, truth = random_pair
    shutil.copytree(pred / "subj01", pred / "subj03")
    assert f"{truth}: no truth for subj03" in _one_line_error(cli("score", pred, "--truth", truth))
    shutil.rmtree(pred / "subj03")
    shutil.copytree(truth / "subj01", truth / "subj02")
    assert f"{pred}: no prediction for subj02" in _one_line_error(cli("score", pred, "--truth", truth))
    empty = pred.parent / "empty"
    empty.mkdir()
    assert "no subjXX/ directories" in _one_line_error(cli("score", empty, "--truth", truth))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: (d / "lh_ncsnr.npy").unlink(), "lh_ncsnr.npy: missing ncsnr"),
        (lambda d: (d / "rh_test_fmri.npy").unlink(), "rh_test_fmri.npy: missing test responses"),
        (lambda d: np.save(d / "test_repeats.npy", np.zeros(25, dtype=int)), "test repeats holds values in [0, 0]"),
        (lambda d: np.save(d / "test_repeats.npy", np.ones(24, dtype=int)), "test responses is [25, 30], expected [24"),
        (lambda d: np.save(d / "rh_ncsnr.npy", -np.ones(20)), "ncsnr must be >= 0"),
        (lambda d: np.save(d / "lh_ncsnr.npy", np.ones(31)), "ncsnr is [31], expected [30]"),
        (lambda d: np.save(d / "lh_test_fmri.npy", np.full((25, 30), np.nan)), "must hold finite numbers"),
        (lambda d: (d / "rh_streams.npy").unlink(), "stream labels are given for one hemisphere only"),
        (lambda d: np.save(d / "lh_streams.npy", np.full(30, 9)), "stream labels holds values in [9, 9]"),
        (lambda d: (d / "lh_test_fmri.npy").write_text("junk"), "not a readable .npy array"),
    ],
)
def test_bad_truth_files_are_user_errors(random_pair: tuple[Path, Path], cli, change, message: str) -> None:
    pred, truth = random_pair
    change(truth / "subj01")
    assert message in _one_line_error(cli("score", pred, "--truth", truth))


def test_bad_predictions_are_user_errors(random_pair: tuple[Path, Path], cli) -> None:
    pred, truth = random_pair
    rh = pred / "subj01" / "rh_pred_test.npy"
    np.save(rh, np.full((25, 20), np.inf))
    assert f"{rh}: prediction holds NaN or infinite values" in _one_line_error(cli("score", pred, "--truth", truth))
    rh.unlink()
    assert f"{rh}: missing prediction" in _one_line_error(cli("score", pred, "--truth", truth))


def test_synthetic_truth_scores_a_planted_submission(synth_eval: SynthInfo, tmp_path: Path) -> None:
    truth = synth_eval.data_dir / "truth"
    measured = {s: np.load(truth / s / "lh_test_fmri.npy") for s in synth_eval.subjects}
    exact = {s: np.hstack([measured[s], np.load(truth / s / "rh_test_fmri.npy")]) for s in synth_eval.subjects}
    result = scores_json(score_dirs(write_submission(tmp_path / "exact", synth_eval, exact), truth))
    assert result["all"]["median"] == result["all"]["mean"] == 100  # the measurement predicts itself

    rng = np.random.default_rng(0)
    planted = {s: planted_test_signal(synth_eval, s) for s in synth_eval.subjects}
    noisy = {s: v + 1.5 * v.std(0) * rng.standard_normal(v.shape) for s, v in planted.items()}
    oracle = scores_json(score_dirs(write_submission(tmp_path / "oracle", synth_eval, planted), truth))
    worse = scores_json(score_dirs(write_submission(tmp_path / "noisy", synth_eval, noisy), truth))
    # the noiseless signal explains what the noise ceiling allows: r^2 / NC is about 1, so the score
    # sits at the cap but for sampling noise; a repeat term of 1/3 instead of the mean of 1/repeats
    # (most synthetic test images are shown once) would bring it well below 90
    assert oracle["all"]["median"] > 97 and 93 < oracle["all"]["mean"] < 100
    for subject in synth_eval.subjects:
        assert oracle["subjects"][subject]["all"]["mean"] > 90
    assert worse["all"]["mean"] < oracle["all"]["mean"] - 30
    assert len(oracle["rois"]) == len(STREAM_NAMES) and all(e["n"] > 0 for e in oracle["rois"].values())


def test_memq_data_synth_writes_a_truth_that_scores(tmp_path: Path, cli) -> None:
    data = tmp_path / "data"
    ran = cli("data", "synth", "--out", data, "--subjects", 1, "--sessions", 2, "--voxels", 60,
              "--image-size", 8, "--feature-dim", 4)  # fmt: skip
    assert ran.code == 0, ran.err
    truth = read_truth(data / "truth", "subj01")
    n_test = truth.repeats.size
    assert n_test > 300 and truth.repeats.min() >= 1 and truth.repeats.sum() == 750  # one predict session
    assert truth.hemis["lh"].streams is not None and truth.hemis["lh"].fmri.shape[0] == n_test
    submission = tmp_path / "pred" / "subj01"
    submission.mkdir(parents=True)
    for hemi in ("lh", "rh"):
        np.save(submission / f"{hemi}_pred_test.npy", truth.hemis[hemi].fmri[::-1])  # wrong image order
    scored = json.loads(cli("score", submission.parent, "--truth", data / "truth", "--json").out)
    assert scored["all"]["median"] < 5
    bad = cli("data", "synth", "--out", tmp_path / "bad", "--noise", 0)
    assert bad.code == 2 and "noise must be positive" in bad.err


def test_a_truth_without_synthetic_json_is_measured(random_pair: tuple[Path, Path]) -> None:
    _, truth = random_pair
    assert synthetic_mark(truth) is None
    (truth / "synthetic.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object"):
        synthetic_mark(truth)
    (truth / "synthetic.json").write_text("{not json")
    with pytest.raises(UserError, match="not a readable JSON file"):
        synthetic_mark(truth)


def test_truth_md_is_the_module_docstring() -> None:
    doc = jobs.data.truth.__doc__
    assert doc is not None
    assert doc.strip() == (Path(jobs.data.truth.__file__).parent / "TRUTH.md").read_text().strip()
