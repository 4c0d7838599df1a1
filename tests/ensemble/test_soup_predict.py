"""mem.soup and mem.predict in this process: what they average and write, idempotence, corrupt copies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from jobs.data.layout import open_subject, subject_path
from jobs.eval.score import pearson
from jobs.mem.data import roi_positions
from jobs.mem.ensemble.artifacts import read_manifest
from jobs.mem.ensemble.soup import CheckpointsUnavailable
from memq.checkpoints import load_verified
from memq.job import prediction_dir, soup_path
from memq.sync import sync

from .rig import GRID, HALVES, Rig, grid_text

ONE_ROI_MODEL = [{"name": "A", "grid": {"DATASET.ROIS": HALVES[:1]}}]


@pytest.fixture
def job(rig: Rig, tmp_path: Path, params: dict[str, Any]) -> dict[str, Any]:
    """One trained ROI job with three registered checkpoints on its node-local scratch."""
    path = tmp_path / "grid.yaml"
    path.write_text(grid_text(params, groups=ONE_ROI_MODEL, ensemble=False))
    (job_id,) = rig.train(path)
    return rig.store.jobs(ids=[job_id])[0]


def checkpoints(rig: Rig, job: dict[str, Any]) -> list[dict[str, Any]]:
    return rig.store.checkpoints(job_ids=[job["id"]], kind="checkpoint")


def mean_of(paths: list[str]) -> dict[str, torch.Tensor]:
    states = [torch.load(p, weights_only=True) for p in paths]
    return {k: torch.stack([s[k] for s in states]).mean(0) for k in states[0]}


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
    assert_close(load_verified(row), mean_of(sources))
    assert summary["checkpoints"] == [r["sha256"] for r in checkpoints(rig, job)]
    assert row["metric"] == summary["val2"] and -1 < summary["val2"] < 1
    assert rig.store.jobs(ids=[ctx.job_id])[0]["metrics"] == {"val2_pearson": summary["val2"], "members": 3}
    before = Path(row["path"]).stat().st_mtime_ns
    rig.run("mem.soup", {"source_job": job["id"], "recipe": "uniform"})
    assert Path(row["path"]).stat().st_mtime_ns == before  # up to date: not made again


def test_greedy_soup_selects_on_val1_reports_val2_and_averages_its_members(rig: Rig, job: dict[str, Any]) -> None:
    rig.run("mem.soup", {"source_job": job["id"], "recipe": "greedy"})
    row, summary = soup_of(rig, job, "greedy")
    ranked = checkpoints(rig, job)  # best first
    trace = summary["trace"]
    assert [t["checkpoint"] for t in trace] == [r["id"] for r in ranked]  # each tried once, best first
    assert summary["members"] == [t["checkpoint"] for t in trace if t["kept"]]
    kept = [t for t in trace if t["kept"]]
    assert summary["val1"] == kept[-1]["selection"] and summary["val2"] == kept[-1]["reported"]
    assert all(t["selection"] <= summary["val1"] for t in trace)
    members = {r["id"]: r["path"] for r in ranked}
    assert_close(load_verified(row), mean_of([members[m] for m in summary["members"]]))


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


def test_predictions_index_their_trials_and_roi_voxels_and_match_the_soup_score(
    rig: Rig, job: dict[str, Any], params: dict[str, Any]
) -> None:
    rig.run("mem.soup", {"source_job": job["id"], "recipe": "uniform"})
    rig.run("mem.predict", {"source_job": job["id"], "recipe": "uniform", "split": "val2"})
    directory = prediction_dir(rig.root, GRID, job["id"], "uniform", "val2")
    manifest = read_manifest(directory)
    assert manifest is not None and sorted(manifest["subjects"]) == ["subj01", "subj02"]
    r = []
    with np.load(directory / "index.npz") as index:
        for subject in manifest["subjects"]:
            with open_subject(subject_path(params["DATASET.DIR"], subject)) as f:
                voxels, trials = roi_positions(f, HALVES[0]), f.split("val2")
                targets = f.betas[trials][:, voxels].astype(np.float32)
            assert np.array_equal(index[f"{subject}.voxels"], voxels)
            assert np.array_equal(index[f"{subject}.trials"], trials)
            values = np.load(directory / f"{subject}.npy")
            assert values.dtype == np.float16 and values.shape == (len(trials), len(voxels))
            r.append(pearson(values.astype(np.float32), targets))
    soup, _ = soup_of(rig, job, "uniform")
    assert float(np.concatenate(r).mean()) == pytest.approx(soup["metric"], abs=2e-3)  # float16 files
    before = (directory / "subj01.npy").stat().st_mtime_ns
    rig.run("mem.predict", {"source_job": job["id"], "recipe": "uniform", "split": "val2"})
    assert (directory / "subj01.npy").stat().st_mtime_ns == before  # up to date: kept
