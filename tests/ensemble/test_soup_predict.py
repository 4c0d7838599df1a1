"""mem.soup and mem.predict in this process: what they average, score and write, idempotence,
corrupt copies. Soups and scores are recomputed here: the checkpoint files read and checked
against their registered sha256, averaged in the test, and scored in NumPy on whole splits
against the betas in the subject files (tests/mem/independent.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from jobs.mem.build import Built, build
from jobs.mem.ensemble.artifacts import read_manifest
from jobs.mem.ensemble.soup import CheckpointsUnavailable
from memq.checkpoints import load_verified
from memq.job import prediction_dir, soup_path
from memq.sync import sync

from ..mem import independent
from ..mem.independent import mean_r, predictions, r_per_voxel, read_targets, split_r
from .rig import GRID, HALVES, Rig, grid_text

ONE_ROI_MODEL = [{"name": "A", "grid": {"DATASET.ROIS": HALVES[:1]}}]


# Checkpoints whose greedy soup on val1 differs from the one val2 would choose: val1 rejects the
# second best checkpoint and keeps the third, val2 would do the opposite (asserted in the test).
TELLS_VAL1_FROM_VAL2 = 9000


def train_one(rig: Rig, tmp_path: Path, params: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
    """One trained ROI job with three registered checkpoints on its node-local scratch."""
    path = tmp_path / "grid.yaml"
    path.write_text(grid_text(params, groups=ONE_ROI_MODEL, ensemble=False))
    (job_id,) = rig.train(path, seed=seed)
    return rig.store.jobs(ids=[job_id])[0]


@pytest.fixture
def job(rig: Rig, tmp_path: Path, params: dict[str, Any]) -> dict[str, Any]:
    return train_one(rig, tmp_path, params)


def checkpoints(rig: Rig, job: dict[str, Any]) -> list[dict[str, Any]]:
    return rig.store.checkpoints(job_ids=[job["id"]], kind="checkpoint")


def read_checkpoint(row: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A registered checkpoint's source file, after checking its size and sha256 here."""
    data = Path(row["path"]).read_bytes()
    assert len(data) == row["size"] and hashlib.sha256(data).hexdigest() == row["sha256"], row["path"]
    return torch.load(row["path"], weights_only=True)


def mean_of(paths: list[str]) -> dict[str, torch.Tensor]:
    return independent.mean_of([torch.load(p, weights_only=True) for p in paths])


def job_model(rig: Rig, job: dict[str, Any]) -> Built:
    """The trained job's model, built from its params as mem.train builds it."""
    return build(job["params"], job["repeat"], [], rig.root)


def soup_of(rig: Rig, job: dict[str, Any], recipe: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(registry row, summary) of a job's soup."""
    path = soup_path(rig.root, GRID, job["id"], recipe)
    row = next(r for r in rig.store.checkpoints(job_ids=[job["id"]], kind="soup") if r["path"] == str(path))
    return row, json.loads(path.with_suffix(".json").read_text())


def assert_close(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, atol=1e-6, rtol=1e-5)


def test_uniform_soup_is_the_mean_of_the_synced_checkpoints_and_is_kept(rig: Rig, job: dict[str, Any]) -> None:
    sources = [row["path"] for row in checkpoints(rig, job)]
    ctx = rig.run("mem.soup", {"source_job": job["id"], "recipe": "uniform"})
    assert all(Path(row["synced_path"]).is_relative_to(rig.root) for row in checkpoints(rig, job))  # synced first
    row, summary = soup_of(rig, job, "uniform")
    expected = independent.mean_of([read_checkpoint(r) for r in checkpoints(rig, job)])
    assert_close(load_verified(row), expected)
    assert summary["checkpoints"] == [r["sha256"] for r in checkpoints(rig, job)]
    val2 = mean_r(split_r(job_model(rig, job), job["params"], expected, "val2"))  # whole val2, in NumPy
    assert summary["val2"] == pytest.approx(val2, abs=1e-5) and row["metric"] == pytest.approx(val2, abs=1e-5)
    assert rig.store.jobs(ids=[ctx.job_id])[0]["metrics"] == {"val2_pearson": summary["val2"], "members": 3}
    assert sorted(sources) == sorted(r["path"] for r in checkpoints(rig, job))
    before = Path(row["path"]).stat().st_mtime_ns
    rig.run("mem.soup", {"source_job": job["id"], "recipe": "uniform"})
    assert Path(row["path"]).stat().st_mtime_ns == before  # up to date: not made again


def test_greedy_soup_selects_on_val1_reports_val2_and_averages_its_members(rig: Rig, tmp_path: Path,
                                                                           params: dict[str, Any]) -> None:
    """The greedy soup recomputed here: checkpoints best registered metric first, each kept if the
    average with it scores higher on val1 than without; the score reported is the soup's val2."""
    job = train_one(rig, tmp_path, params, seed=TELLS_VAL1_FROM_VAL2)
    rig.run("mem.soup", {"source_job": job["id"], "recipe": "greedy"})
    row, summary = soup_of(rig, job, "greedy")
    ranked = sorted(checkpoints(rig, job), key=lambda r: (-r["metric"], r["id"]))
    assert len({r["metric"] for r in ranked}) == len(ranked) == 3  # an unambiguous order
    states = [read_checkpoint(r) for r in ranked]
    built = job_model(rig, job)
    scores: dict[tuple[int, ...], tuple[float, float]] = {}

    def score(members: tuple[int, ...]) -> tuple[float, float]:
        """(val1, val2) mean r of the average of ``members`` (positions in ``ranked``)."""
        if members not in scores:
            soup = independent.mean_of([states[i] for i in members])
            scores[members] = tuple(mean_r(split_r(built, job["params"], soup, split)) for split in ("val1", "val2"))
        return scores[members]

    def greedy(split: int) -> tuple[int, ...]:
        members = (0,)
        for candidate in range(1, len(ranked)):
            tried, best = score((*members, candidate))[split], score(members)[split]
            assert abs(tried - best) > 1e-4  # far from a tie: float rounding cannot flip the choice
            if tried > best:
                members = (*members, candidate)
        return members

    chosen, on_val2 = greedy(0), greedy(1)
    assert chosen != on_val2  # these checkpoints tell selection on val1 from selection on val2
    assert summary["members"] == [ranked[i]["id"] for i in chosen]
    val1, val2 = score(chosen)
    assert abs(val1 - val2) > 1e-3  # the two scores cannot be mistaken for each other
    assert summary["selection_split"] == "val1"
    assert summary["val1"] == pytest.approx(val1, abs=1e-5) and summary["val2"] == pytest.approx(val2, abs=1e-5)
    assert row["metric"] == pytest.approx(val2, abs=1e-5)
    assert_close(load_verified(row), independent.mean_of([states[i] for i in chosen]))
    # each checkpoint after the best was tried once, in order, and scored as recomputed here
    tried = [t for t in summary["trace"] if t["checkpoint"] != ranked[0]["id"]]
    assert [t["checkpoint"] for t in tried] == [r["id"] for r in ranked[1:]]
    members: tuple[int, ...] = (0,)
    for position, entry in enumerate(tried, start=1):
        expected = score((*members, position))
        assert (entry["selection"], entry["reported"]) == pytest.approx(expected, abs=1e-5)
        if entry["kept"]:
            members = (*members, position)


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupted_shared_copy_is_copied_again_from_its_source(rig: Rig, job: dict[str, Any]) -> None:
    sources = [row["path"] for row in checkpoints(rig, job)]
    assert sync(rig.store, job_ids=[job["id"]]).ok
    corrupt(Path(checkpoints(rig, job)[1]["synced_path"]))
    rig.run("mem.soup", {"source_job": job["id"], "recipe": "uniform"})
    row, _ = soup_of(rig, job, "uniform")
    assert_close(load_verified(row), mean_of(sources))  # the good bytes, not the corrupted ones
    load_verified(checkpoints(rig, job)[1])  # the shared copy is whole again


def test_a_checkpoint_that_cannot_be_repaired_is_reported_never_averaged(rig: Rig, job: dict[str, Any]) -> None:
    assert sync(rig.store, job_ids=[job["id"]]).ok
    bad = checkpoints(rig, job)[2]
    corrupt(Path(bad["synced_path"]))
    Path(bad["path"]).unlink()  # its node's scratch is gone
    with pytest.raises(CheckpointsUnavailable, match=r"epoch-\d+\.pt"):
        rig.run("mem.soup", {"source_job": job["id"], "recipe": "uniform"})
    assert not soup_path(rig.root, GRID, job["id"], "uniform").exists()
    assert rig.store.checkpoints(job_ids=[job["id"]], kind="soup") == []
    assert rig.store.jobs(grid="drive")[0]["state"] == "failed"


def test_predictions_index_their_trials_and_roi_voxels_and_are_the_soup_s_outputs(
    rig: Rig, job: dict[str, Any], params: dict[str, Any]
) -> None:
    rig.run("mem.soup", {"source_job": job["id"], "recipe": "uniform"})
    rig.run("mem.predict", {"source_job": job["id"], "recipe": "uniform", "split": "val2"})
    directory = prediction_dir(rig.root, GRID, job["id"], "uniform", "val2")
    manifest = read_manifest(directory)
    assert manifest is not None and sorted(manifest["subjects"]) == ["subj01", "subj02"]
    soup = independent.mean_of([read_checkpoint(r) for r in checkpoints(rig, job)])
    model = predictions(job_model(rig, job), soup, "val2")  # the soup's outputs, computed here
    r, r_model = [], []
    with np.load(directory / "index.npz") as index:
        for subject in manifest["subjects"]:
            trials, targets = read_targets(params["DATASET.DIR"], subject, "val2", HALVES[0])
            assert np.array_equal(index[f"{subject}.trials"], trials)
            with h5py.File(Path(params["DATASET.DIR"]) / f"{subject}.h5", "r") as f:
                voxels = list(dict.fromkeys(int(v) for roi in HALVES[0] for v in f[f"rois/{roi}"][:]))
            assert index[f"{subject}.voxels"].tolist() == voxels
            values = np.load(directory / f"{subject}.npy")
            assert values.dtype == np.float16 and values.shape == (len(trials), len(voxels))
            model_trials, expected = model[subject]
            assert np.array_equal(model_trials, trials)
            np.testing.assert_allclose(values.astype(np.float64), expected, atol=2e-3, rtol=1e-3)  # float16
            r.append(r_per_voxel(values, targets))
            r_model.append(r_per_voxel(expected, targets))
    assert float(np.concatenate(r).mean()) == pytest.approx(float(np.concatenate(r_model).mean()), abs=2e-3)
    before = (directory / "subj01.npy").stat().st_mtime_ns
    rig.run("mem.predict", {"source_job": job["id"], "recipe": "uniform", "split": "val2"})
    assert (directory / "subj01.npy").stat().st_mtime_ns == before  # up to date: kept
