"""Memory replay at demo scale (grids/replay.yaml): a fake NSD tree prepared in space fship, then
tiny previous-frame-only models (subj01 at two frames, subj02 at one) trained on CPU by a real `memq worker`,
each checked to have seen its frame and nothing else, and `memq report`'s replay curve checked
against the jobs' validation r read back from their CSV logs."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml

from jobs.data.layout import LayoutError
from jobs.mem.build import build
from jobs.mem.config import tiny
from jobs.mem.data import MemDataModule, MemDataset
from jobs.mem.validate import validate_train
from memq.checkpoints import load_verified
from memq.grid import load_grid
from memq.paths import job_dir
from tests.data.nsd_fake import write_fake_nsd

from .jobs_helpers import val_rows
from .queue_rig import GRID, QueueRig

REPO = Path(__file__).parents[2]
SUBJECTS = ["subj01", "subj02"]
FRAMES = [0, -3]
MODELS = [("subj01", 0), ("subj01", -3), ("subj02", 0)]  # the curve's mean at T=-3 has subj01 alone
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _frames_group() -> dict[str, Any]:
    grid = yaml.safe_load((REPO / "grids/replay.yaml").read_text())
    return next(group for group in grid["groups"] if group["name"] == "frames")


def _memq(*args: object, root: Path, log: Path, timeout: float) -> None:
    env = {**os.environ, "MEMQ_SCRATCH": str(root.parent / "worker-scratch")}
    with log.open("ab") as out:
        code = subprocess.run([sys.executable, "-m", "memq", "--root", str(root), *map(str, args)], cwd=REPO,
                              env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode  # fmt: skip
    assert code == 0, log.read_text()[-3000:]


class Trained:
    def __init__(self, tmp: Path) -> None:
        tree = write_fake_nsd(tmp / "tree", dict.fromkeys(SUBJECTS, 4), n_vertices=30, image_size=8, volume=(5, 6, 4))
        self.data = tmp / "prepared"
        self.log = tmp / "log.txt"
        self.rig = QueueRig(tmp)
        _memq("data", "prepare-nsd", "--nsd-dir", tree.nsd_dir, "--alg-dir", tree.alg_dir, "--out", self.data,
              "--space", "fship", "--image-size", 32, root=self.rig.root, log=self.log, timeout=300)  # fmt: skip
        # the grid's switches and space, at the tiny scale of the tests
        copied = ("ABLATION.", "EXPERIMENTAL.", "DATASET.FMRI", "TRAINER.LIMIT_")
        replay = {k: v for k, v in _frames_group()["params"].items() if k.startswith(copied)}
        base = {**tiny(), **replay, "DATASET.DIR": str(self.data), "OPTIMIZER.LR": 0.01,
                "OPTIMIZER.SCHEDULER.WARMUP_EPOCHS": 0, "TRAINER.BATCH_SIZE": 64, "TRAINER.MAX_EPOCHS": 2,
                "TRAINER.SAVE_TOP_K": 2}  # fmt: skip
        self.params = {(s, t): {**base, "DATASET.SUBJECTS": [s], "EXPERIMENTAL.T_IMAGE": t} for s, t in MODELS}
        self.ids = {key: self.rig.submit("mem.train", p, group="frames") for key, p in self.params.items()}
        _memq("worker", "--gpus", "none", "--slots", "1", "--max-jobs", len(self.ids), "--poll", "0.2",
              root=self.rig.root, log=self.log, timeout=900)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return Trained(tmp_path_factory.mktemp("replay"))


def test_the_grid_has_the_reference_job_count(tmp_path: Path) -> None:
    random_weights = ["--set", "MODEL.BACKBONE.WEIGHTS=random", "--set", "MODEL.BACKBONE_SMALL.WEIGHTS=random"]
    argv = [sys.executable, "-m", "memq", "--root", str(tmp_path / "root"), "submit", "grids/replay.yaml", "--dry-run"]
    dry = subprocess.run([*argv, *random_weights], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and "replay: 280 jobs (dry run, nothing written)" in dry.stdout, dry.stderr
    spec = load_grid(REPO / "grids/replay.yaml")
    frames = [job for job in spec.jobs if job.group == "frames"]
    assert len(spec.jobs) == 280 and len(frames) == 32 * 8  # + 8 + 8 = xdaa's 272 training jobs, + 8 to prepare
    assert {(job.params["DATASET.SUBJECTS"][0], job.params["EXPERIMENTAL.T_IMAGE"]) for job in frames} == {
        (f"subj{s:02d}", -t) for s in range(1, 9) for t in range(32)
    }
    prepare = [job for job in spec.jobs if job.group == "prepare"]
    assert {job.params["space"] for job in prepare} == {"fship"} and len(prepare) == 8
    every = [job for job in spec.jobs if job.group == "all_frames"]
    assert sorted(job.params["DATASET.SUBJECTS"][0] for job in every) == [f"subj{s:02d}" for s in range(1, 9)]
    current = {j.params["DATASET.SUBJECTS"][0]: j.params for j in frames if j.params["EXPERIMENTAL.T_IMAGE"] == 0}
    shuffled = [job for job in spec.jobs if job.group == "shuffled"]
    for group, changed in ((every, {"ABLATION.MEMORY_IMAGES"}),
                           (shuffled, {"ABLATION.MEMORY_IMAGES", "EXPERIMENTAL.SHUFFLE_IMAGES"})):  # fmt: skip
        assert len(group) == 8
        for job in group:  # the T=0 frame model of the subject, given every frame (shuffled)
            same = current[job.params["DATASET.SUBJECTS"][0]]
            assert {k for k in job.params.keys() | same.keys() if job.params.get(k) != same.get(k)} == changed
            assert all(job.params[k] is True for k in changed)
    assert all(job.params["DATASET.FMRI_SPACE"] == "fship" for job in frames + every + shuffled)
    for job in frames + every + shuffled:
        validate_train(job.params)  # valid settings, weights named


def test_each_model_trained_on_its_frame_only(trained: Trained) -> None:
    for key, job_id in trained.ids.items():
        job = trained.rig.job(job_id)
        assert job["state"] == "succeeded", trained.log.read_text()[-3000:]
        rows = trained.rig.checkpoints(job_id)
        assert rows
        keys = set(load_verified(rows[0]))  # sha256-checked: the weights that trained
        assert keys and {k.split(".")[0] for k in keys} == {"current", "readout"}, (key, sorted(keys))
        # frozen ViT and its behaviour embedder (BACKBONE_NOGRAD); no conv heads without a RetinaMapper
        assert all(k.startswith(("current.cls_heads.", "readout.")) for k in keys), sorted(keys)
        assert any(k.startswith(f"readout.{key[0]}.") for k in keys)


def _image(images: h5py.File, image_id: int) -> np.ndarray:
    if image_id == -1:
        return np.full((3, 32, 32), 0.1)
    row = int(np.searchsorted(images["ids"][()], image_id))
    assert images["ids"][row] == image_id
    return (images["images"][row] / 255.0 - MEAN[:, None, None]) / STD[:, None, None]


def test_a_batch_holds_the_frame_t_slots_back_and_nothing_else(trained: Trained) -> None:
    with h5py.File(trained.data / "images.h5") as images:
        for (subject, t), params in trained.params.items():
            built = build(params, 0, [], trained.rig.root)
            assert built.model.previous is None and built.model.memory is None
            assert built.model.retina_mapper is None and built.model.layer_selector is None
            dataset = built.data.datasets("val1")[0]
            with h5py.File(trained.data / f"{subject}.fship.h5") as f:
                memory_index, betas = f["memory_index"][()], f["betas"]
                shown = memory_index[:, 32 + t]
                blank = [i for i, g in enumerate(dataset.indices) if shown[g] == -1]
                for i in [0, 1, *blank[:1]]:
                    sample = dataset[i]
                    g = sample["index"]
                    assert set(sample) == {"img", "bhv", "y", "subject", "index"}
                    np.testing.assert_allclose(sample["img"].numpy(), _image(images, int(shown[g])), atol=1e-5)
                    np.testing.assert_allclose(sample["y"].numpy(), betas[g].astype(np.float32))
                if t != 0:
                    assert blank, "a val1 trial of the fake design has a blank slot 3 back"
                    assert np.any(shown[dataset.indices] != memory_index[dataset.indices, 32])
    # EXPERIMENTAL.SHUFFLE_IMAGES: the reference's random.shuffle of the NumPy memory table, done here
    # on the subject's table: each trial sees the frames of the row that lands on it, keeps its betas
    with h5py.File(trained.data / "subj01.fship.h5") as f, h5py.File(trained.data / "images.h5") as images:
        table, betas = f["memory_index"][()], f["betas"]
        random.Random("5:val1").shuffle(table)  # rows copied through views: some repeat, as in the reference
        assert len(np.unique(table, axis=0)) < len(table)
        dataset = MemDataset(trained.data / "subj01.fship.h5", "val1", None, trained.data / "images.h5",
                             memory=False, shuffle_seed=5)  # fmt: skip
        for i in (0, 5):
            sample = dataset[i]
            g = sample["index"]
            np.testing.assert_allclose(sample["img"].numpy(), _image(images, int(table[g, 32])), atol=1e-5)
            np.testing.assert_allclose(sample["y"].numpy(), betas[g].astype(np.float32))
    with pytest.raises(LayoutError, match=r"no subject file of space fship_b2 \(subjXX.fship_b2.h5\) for any subject"):
        MemDataModule(trained.data, space="fship_b2")


def test_report_draws_the_replay_curve(trained: Trained, tmp_path: Path) -> None:
    out = tmp_path / "report"
    _memq("report", GRID, "--out", out, root=trained.rig.root, log=trained.log, timeout=300)
    curve = json.loads((out / "replay.json").read_text())
    assert curve["frames"] == FRAMES and sorted(curve["subjects"]) == SUBJECTS
    best = {
        key: max(row["VAL/PearsonCorrCoef/mean"] for row in val_rows(job_dir(trained.rig.root, GRID, job_id, 1)))
        for key, job_id in trained.ids.items()
    }
    assert curve["subjects"]["subj02"][1] is None  # no model of subj02 at T=-3
    np.testing.assert_allclose(curve["subjects"]["subj01"], [best["subj01", 0], best["subj01", -3]], rtol=1e-6)
    np.testing.assert_allclose(curve["subjects"]["subj02"][0], best["subj02", 0], rtol=1e-6)
    expected_mean = [(best["subj01", 0] + best["subj02", 0]) / 2, best["subj01", -3]]
    np.testing.assert_allclose(curve["mean"], expected_mean, rtol=1e-6)
    page = (out / "index.html").read_text()
    assert (out / "replay.png").stat().st_size > 0 and "Memory replay" in page
    assert "2 subjects, 192 voxels, space fship" in page  # the prepared files of the jobs' DATASET.FMRI_SPACE
