"""mem.ensemble on prediction files made without models: stitching, averaging, submission, scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs.data.layout import N_SLOTS, open_subject, subject_path
from jobs.data.synth import SynthInfo, load_truth
from jobs.eval.report import read_scheme_scores
from jobs.eval.submission import read_prediction
from jobs.mem.config import RANDOM_BACKBONES
from memq.checkpoints import ChecksumError
from memq.files import temp_path
from memq.job import prediction_dir
from memq.runner import PermanentError

from .fake import expected, write_fake
from .rig import GRID, HALVES, Rig, grid_text

ATLASES = [
    {"name": "all", "repeat": 2},
    {"name": "A", "grid": {"DATASET.ROIS": HALVES}},
    {"name": "W", "grid": {"DATASET.ROIS": [[f"w_{i}"] for i in range(1, 10)]}},
]


def trained(rig: Rig, tmp_path: Path, data: SynthInfo, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Succeeded training jobs of ``groups`` on ``data`` (no checkpoints: their predictions are made up)."""
    path = tmp_path / "grid.yaml"
    path.write_text(grid_text({"DATASET.DIR": str(data.data_dir), **RANDOM_BACKBONES}, groups=groups, ensemble=False))
    rig.train(path, n_checkpoints=0)
    return rig.store.jobs(grid=GRID)


def noise(job: dict[str, Any], subject: str, trials: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng([job["id"], int(subject[-2:]), len(trials)])
    return rng.standard_normal((len(trials), len(voxels)))


def combine(rig: Rig, out: Path, jobs: list[dict[str, Any]], **params: Any) -> None:
    rig.run("mem.ensemble", {"grid": GRID, "out": str(out), "jobs": [j["id"] for j in jobs], **params})


def by_scheme(jobs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    names = {"all": lambda j: f"all-{j['repeat']}"}
    out: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        out.setdefault(names.get(job["group"], lambda j: j["group"])(job), []).append(job)
    return out


def test_stitching_and_averaging_equal_an_independent_numpy_computation(
    rig: Rig, tmp_path: Path, planted: SynthInfo
) -> None:
    jobs = trained(rig, tmp_path, planted, ATLASES)
    for job in jobs:
        write_fake(rig.root, planted.data_dir, job, noise)
    out = tmp_path / "out"
    leftover = temp_path(out / "subj01" / "lh_pred_test.npy")  # of a combine job killed while writing
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"partial")
    (out / "notes.txt").write_text("mine")
    combine(rig, out, jobs)
    assert not leftover.exists() and (out / "notes.txt").read_text() == "mine"
    want = expected(planted.data_dir, by_scheme(jobs), noise)
    for subject, hemis in want["submission"].items():
        got = read_prediction(out, subject)
        for hemi in ("lh", "rh"):
            assert np.load(out / subject / f"{hemi}_pred_test.npy").dtype == np.float32
            np.testing.assert_allclose(got[hemi], hemis[hemi], atol=1e-5)
    scores = json.loads((out / "scores.json").read_text())
    assert list(scores["per_scheme"]) == ["all-0", "all-1", "A", "W"]
    for name, entry in want["scores"]["per_scheme"].items():
        assert scores["per_scheme"][name]["mean"] == pytest.approx(entry["mean"], abs=1e-5)
        assert scores["per_scheme"][name]["per_subject"] == pytest.approx(entry["per_subject"], abs=1e-5)
    assert [c["schemes"] for c in scores["cumulative"]] == [c["schemes"] for c in want["scores"]["cumulative"]]
    assert [c["mean"] for c in scores["cumulative"]] == pytest.approx(
        [c["mean"] for c in want["scores"]["cumulative"]], abs=1e-5)
    report = read_scheme_scores(out / "scores.json")  # what `memq report` reads
    assert report.cumulative[-1] == ("W", pytest.approx(want["scores"]["cumulative"][-1]["mean"], abs=1e-5))
    manifest = json.loads((out / "ensemble.json").read_text())
    assert manifest["schemes"] == {name: [j["id"] for j in js] for name, js in by_scheme(jobs).items()}
    assert manifest["subjects"] == ["subj01", "subj02"] and manifest["skipped"] == {}


def test_the_ensemble_of_two_atlases_beats_each_atlas_alone(rig: Rig, tmp_path: Path, planted: SynthInfo) -> None:
    jobs = trained(rig, tmp_path, planted, ATLASES[1:])

    def signal_plus_noise(job: dict[str, Any], subject: str, trials: np.ndarray, voxels: np.ndarray) -> np.ndarray:
        signal = load_truth(planted.data_dir, subject).signal(trials)[:, voxels]
        return signal + 2 * signal.std(0) * noise(job, subject, trials, voxels)  # each model errs on its own

    for job in jobs:
        write_fake(rig.root, planted.data_dir, job, signal_plus_noise)
    out = tmp_path / "out"
    combine(rig, out, jobs)
    scores = json.loads((out / "scores.json").read_text())
    alone = {name: entry["mean"] for name, entry in scores["per_scheme"].items()}
    assert set(alone) == {"A", "W"} and min(alone.values()) > 0.1
    ensemble = scores["cumulative"][-1]["mean"]
    assert ensemble > max(alone.values()) + 0.02, (alone, ensemble)
    for subject in ("subj01", "subj02"):
        assert scores["cumulative"][-1]["per_subject"][subject] > max(
            scores["per_scheme"][name]["per_subject"][subject] for name in alone)


def test_submission_has_the_algonauts_shapes_and_orders(rig: Rig, tmp_path: Path, planted: SynthInfo) -> None:
    jobs = trained(rig, tmp_path, planted, ATLASES[1:2])
    layouts = {}
    for subject in ("subj01", "subj02"):
        with open_subject(subject_path(planted.data_dir, subject)) as f:
            order = f.challenge_images()
            layouts[subject] = (f.challenge, order, dict(zip(f.split("predict"),
                                                             f.memory_index()[f.split("predict"), N_SLOTS - 1],
                                                             strict=True)))

    def rank_of_image(job: dict[str, Any], subject: str, trials: np.ndarray, voxels: np.ndarray) -> np.ndarray:
        _, order, image = layouts[subject]
        rank = np.searchsorted(order, [image.get(g, order[0]) for g in trials])  # challenge_images are sorted here
        return np.repeat(rank[:, None].astype(np.float64), len(voxels), axis=1)

    def position(job: dict[str, Any], subject: str, trials: np.ndarray, voxels: np.ndarray) -> np.ndarray:
        return np.repeat(voxels[None].astype(np.float64), len(trials), axis=0)

    for values, check in ((rank_of_image, "rows"), (position, "columns")):
        for job in jobs:
            write_fake(rig.root, planted.data_dir, job, values)
        out = tmp_path / check
        combine(rig, out, jobs)
        for subject, (layout, order, _) in layouts.items():
            got = read_prediction(out, subject)
            assert got["lh"].shape == (len(order), layout.n_lh) and got["rh"].shape == (len(order), layout.n_rh)
            if check == "rows":  # row i is challenge image i, in challenge_images order
                for hemi in ("lh", "rh"):
                    assert np.array_equal(got[hemi], np.repeat(np.arange(len(order))[:, None], got[hemi].shape[1], 1))
            else:  # the first n_challenge voxels, lh then rh
                assert np.array_equal(got["lh"][0], np.arange(layout.n_lh))
                assert np.array_equal(got["rh"][0], np.arange(layout.n_lh, layout.n_challenge))


def test_a_scheme_must_cover_every_voxel_exactly_once(rig: Rig, tmp_path: Path, planted: SynthInfo) -> None:
    groups = [*ATLASES[1:2], {"name": "X", "grid": {"DATASET.ROIS": [*HALVES, ["E"]]}}]  # X predicts E twice
    jobs = trained(rig, tmp_path, planted, groups)
    for job in jobs:
        write_fake(rig.root, planted.data_dir, job, noise)
    out = tmp_path / "out"
    with pytest.raises(PermanentError, match="scheme X: subj01 predict: 0 of 300 voxels predicted by no model, "
                                             r"\d+ by more than one"):
        combine(rig, out, jobs)
    a_half = [job for job in jobs if job["group"] == "A"][:1]
    with pytest.raises(PermanentError, match=r"scheme A: subj01 predict: .* predicted by no model, 0 by more"):
        combine(rig, out, a_half)
    assert not (out / "ensemble.json").exists()
    combine(rig, out, jobs, partial=True, schemes=["Z", "X", "A"])
    manifest = json.loads((out / "ensemble.json").read_text())
    assert list(manifest["schemes"]) == ["A"] and "more than one" in manifest["skipped"]["X"]
    assert manifest["skipped"]["Z"] == "no succeeded jobs"


def test_a_corrupted_prediction_file_fails_the_ensemble(rig: Rig, tmp_path: Path, planted: SynthInfo) -> None:
    jobs = trained(rig, tmp_path, planted, ATLASES[1:2])
    for job in jobs:
        write_fake(rig.root, planted.data_dir, job, noise)
    path = prediction_dir(rig.root, GRID, jobs[1]["id"], "uniform", "predict") / "subj02.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(ChecksumError, match=r"subj02\.npy"):
        combine(rig, out, jobs)
    assert not (out / "ensemble.json").exists()
