"""Kind mem.train end to end: real store, real Lightning training on CPU, synthetic data."""

from __future__ import annotations

import hashlib
import itertools
import shutil
from pathlib import Path
from typing import Any

import h5py
import pytest
import torch

from jobs.data.layout import open_subject, subject_path
from jobs.data.synth import SynthInfo
from jobs.mem.build import build
from jobs.mem.train import train
from jobs.mem.train.topk import RESUME_FILE
from jobs.weights.load import verified_state_dict
from jobs.weights.manifest import read_manifest
from memq import runner
from memq.context import JobContext
from memq.runner import PermanentError

from .conftest import install_tiny_weights
from .jobs_helpers import build_model, result, val_rows
from .queue_rig import QueueRig

TOP_K = 3


class Trained:
    """One finished mem.train job (4 epochs, top-3)."""

    def __init__(self, rig: QueueRig, job_id: int, ctx: JobContext, params: dict[str, Any]) -> None:
        self.rig, self.job_id, self.ctx, self.params = rig, job_id, ctx, params


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, job_params: dict[str, Any]) -> Trained:
    rig = QueueRig(tmp_path_factory.mktemp("queue"))
    params = {
        **job_params,
        "TRAINER.MAX_EPOCHS": 4,
        "TRAINER.LIMIT_TRAIN_BATCHES": 0.75,
        "TRAINER.SAVE_TOP_K": TOP_K,
    }
    job_id = rig.submit("mem.train", params)
    ctx = rig.claim()
    train.run(ctx)
    return Trained(rig, job_id, ctx, params)


def test_reaches_most_of_the_planted_ceiling(trained: Trained, synth_data: SynthInfo) -> None:
    best = result(trained.ctx.job_dir)["val_pearson"]
    # the validation r averages all voxels of both subjects, as r_ceiling_mean does
    assert best >= 0.7 * synth_data.r_ceiling_mean, (best, synth_data.r_ceiling_mean)
    rows = val_rows(trained.ctx.job_dir)
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3]
    assert best == pytest.approx(max(row["VAL/PearsonCorrCoef/mean"] for row in rows))


def test_mean_is_voxel_weighted_over_subjects(trained: Trained, synth_data: SynthInfo) -> None:
    n = {s: len(c) for s, c in synth_data.r_ceiling.items()}
    for row in val_rows(trained.ctx.job_dir):
        weighted = sum(n[s] * row[f"VAL/PearsonCorrCoef/{s}"] for s in n) / sum(n.values())
        assert row["VAL/PearsonCorrCoef/mean"] == pytest.approx(weighted, abs=1e-6)


def test_keeps_exactly_the_top_k_checkpoints(trained: Trained) -> None:
    registered = trained.rig.checkpoints(trained.job_id)
    scores = {int(row["epoch"]): row["VAL/PearsonCorrCoef/mean"] for row in val_rows(trained.ctx.job_dir)}
    best_epochs = sorted(scores, key=scores.get, reverse=True)[:TOP_K]
    assert [c["step"] for c in registered] == best_epochs  # the store lists the best first
    assert [c["metric"] for c in registered] == pytest.approx([scores[e] for e in best_epochs])
    on_disk = sorted(trained.ctx.scratch_dir.rglob("*.pt"))
    assert on_disk == sorted(Path(c["path"]) for c in registered)  # dropped ones were deleted
    keys = set(build_model(trained.params).trainable_state_dict())
    for checkpoint in registered:
        path = Path(checkpoint["path"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == checkpoint["sha256"]
        assert checkpoint["size"] == path.stat().st_size and checkpoint["attempt"] == 1
        state = torch.load(path, weights_only=True)
        assert set(state) == keys  # trainable weights only: no frozen ViT, no optimiser
        assert not any(".base." in key for key in state)


def test_reports_progress_metrics_and_result(trained: Trained) -> None:
    job = trained.rig.job(trained.job_id)
    summary = result(trained.ctx.job_dir)
    assert job["metrics"] == {"val_pearson": summary["val_pearson"], "epochs": 4}
    assert job["progress"]["epoch"] == 3 and job["progress"]["best"] == summary["val_pearson"]
    assert job["progress"]["val"] == pytest.approx(val_rows(trained.ctx.job_dir)[-1]["VAL/PearsonCorrCoef/mean"])
    assert summary["epochs"] == 4 and len(summary["checkpoints"]) == TOP_K
    assert summary["weights"] == {"MODEL.BACKBONE.WEIGHTS": "random", "MODEL.BACKBONE_SMALL.WEIGHTS": "random"}
    assert list((trained.ctx.job_dir / "logs" / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_file_holds_trainable_state_and_sync(trained: Trained) -> None:
    state = torch.load(trained.ctx.job_dir / RESUME_FILE, weights_only=True)
    keys = set(build_model(trained.params).trainable_state_dict())
    assert set(state["state_dict"]) == {f"model.{k}" for k in keys}
    assert state["epoch"] == 3 and state["optimizer_states"] and state["lr_schedulers"]
    topk = next(v for k, v in state["callbacks"].items() if "TopKCheckpoints" in k)
    assert [e["path"] for e in topk["entries"]] == [c["path"] for c in trained.rig.checkpoints(trained.job_id)]

    # SYNC: one EMA update per validation epoch (not the sanity check): v_prev is the last r, and
    # as the EMA is linear, the voxel mean of running_grad is the EMA of the mean r's changes
    rows = val_rows(trained.ctx.job_dir)
    assert set(state["sync"]["running_grad"]) == set(state["sync"]["prev_r"]) == {"subj01", "subj02"}
    for subject, grad in state["sync"]["running_grad"].items():
        means = [0.0] + [row[f"VAL/PearsonCorrCoef/{subject}"] for row in rows]
        expected = 0.0
        for before, after in itertools.pairwise(means):
            expected = 0.9 * expected + 0.1 * (after - before)
        assert grad.mean().item() == pytest.approx(expected, abs=1e-5)
        assert state["sync"]["prev_r"][subject].mean().item() == pytest.approx(means[-1], abs=1e-5)


def test_resume_continues_the_epoch_count_and_adopts_checkpoints(tmp_path: Path, job_params: dict[str, Any]) -> None:
    rig = QueueRig(tmp_path)
    params = {
        **job_params,
        "DATASET.ROIS": ["E", "V"],
        "TRAINER.MAX_EPOCHS": 4,
        "TRAINER.LIMIT_TRAIN_BATCHES": 0.1,
        "TRAINER.SAVE_TOP_K": 2,
    }
    job_id = rig.submit("mem.train", params)
    first = rig.claim()
    first.params = {**params, "TRAINER.MAX_EPOCHS": 2}  # as if the attempt died after two epochs
    train.run(first)
    kept, lost = rig.checkpoints(job_id)
    Path(lost["path"]).unlink()  # e.g. the next attempt runs on another node

    rig.lose_worker()
    second = rig.claim()
    assert second.attempt == 2 and second.resume_file(RESUME_FILE) == first.job_dir / RESUME_FILE
    train.run(second)

    first_rows, second_rows = val_rows(first.job_dir), val_rows(second.job_dir)
    assert [row["epoch"] for row in first_rows] == [0, 1]
    assert [row["epoch"] for row in second_rows] == [2, 3]
    assert second_rows[0]["step"] > first_rows[-1]["step"]  # the optimiser's step count went on
    summary = result(second.job_dir)
    assert summary["epochs"] == 4
    job = rig.job(job_id)
    assert job["metrics"]["val_pearson"] == summary["val_pearson"] and job["progress"]["epoch"] == 3

    registered = rig.checkpoints(job_id)
    assert len(registered) == 2 and lost["path"] not in {c["path"] for c in registered}
    assert all(c["attempt"] == 2 and Path(c["path"]).is_file() for c in registered)
    candidates = {kept["path"]: kept["metric"]} | {
        c["path"]: c["metric"] for c in registered if c["path"] != kept["path"]
    }
    assert [c["path"] for c in registered] == sorted(candidates, key=candidates.get, reverse=True)[:2]

    # per-ROI r: E and V are disjoint, so each subject's r is their voxel-weighted mean
    for subject in ("subj01", "subj02"):
        with open_subject(subject_path(params["DATASET.DIR"], subject)) as file:
            sizes = {roi: len(file.roi(roi)) for roi in ("E", "V")}
        for row in second_rows:
            per_roi = sum(n * row[f"VAL/PearsonCorrCoef/{subject}/{roi}"] for roi, n in sizes.items())
            assert row[f"VAL/PearsonCorrCoef/{subject}"] == pytest.approx(per_roi / sum(sizes.values()), abs=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"DATASET.DIR": "/nonexistent/prepared"}, "DATASET.DIR: data directory /nonexistent/prepared does not exist"),
        ({"MODEL.TOPYNECK_PATH": "/nonexistent/topyneck.pth"}, "MODEL.TOPYNECK_PATH: file /nonexistent/topyneck.pth"),
        ({"OPTIMIZER.LR": -1.0}, "bad config: OPTIMIZER.LR"),
        ({"OPTIMZER.LR": 0.1}, "bad config: OPTIMZER.LR: not a config key; did you mean OPTIMIZER.LR?"),
        ({"MODEL.BACKBONE.WEIGHTS": None}, "MODEL.BACKBONE.WEIGHTS is not set"),
        ({"MODEL.BACKBONE_SMALL.WEIGHTS": "dinov2_vits14"}, "MODEL.BACKBONE_SMALL.WEIGHTS: no weights named"),
    ],
)
def test_unfixable_inputs_fail_permanently(
    tmp_path: Path, job_params: dict[str, Any], change: dict[str, Any], message: str
) -> None:
    rig = QueueRig(tmp_path)
    rig.submit("mem.train", {**job_params, **change})
    with pytest.raises(PermanentError, match="^" + message.replace("?", r"\?")) as error:
        train.run(rig.claim())
    assert "\n" not in str(error.value)


def test_a_missing_roi_fails_permanently_and_names_the_command_that_adds_it(
    tmp_path: Path, job_params: dict[str, Any]
) -> None:
    data = tmp_path / "prepared"
    shutil.copytree(job_params["DATASET.DIR"], data)
    for subject in ("subj01", "subj02"):
        with h5py.File(subject_path(data, subject), "a") as file:
            del file["rois/w_3"]  # as before `memq data atlas-w`
    rig = QueueRig(tmp_path)
    rig.submit("mem.train", {**job_params, "DATASET.DIR": str(data), "DATASET.ROIS": ["w_3"]})
    message = r"subj01.h5: no ROI 'w_3'; ROIs here: .*r_9_9.*\(atlas W: run `memq data atlas-w` first\)$"
    with pytest.raises(PermanentError, match=message):
        train.run(rig.claim())


def test_the_runner_fails_a_job_without_data_at_once(
    tmp_path: Path, job_params: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = QueueRig(tmp_path)
    rig.submit("mem.train", {**job_params, "DATASET.DIR": str(tmp_path / "missing")})
    for name, value in rig.environment(rig.claim()).items():
        monkeypatch.setenv(name, value)
    assert runner.main() == runner.EXIT_PERMANENT  # the kind is found by name, its error is final
    message = f"memq: error: DATASET.DIR: data directory {tmp_path / 'missing'} does not exist (not retried)"
    assert capsys.readouterr().err.strip() == message


def test_the_runner_fails_a_job_without_backbone_weights_at_once(
    tmp_path: Path, job_params: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = QueueRig(tmp_path)
    rig.submit("mem.train", {k: v for k, v in job_params.items() if not k.endswith(".WEIGHTS")})  # as before names
    for name, value in rig.environment(rig.claim()).items():
        monkeypatch.setenv(name, value)
    assert runner.main() == runner.EXIT_PERMANENT  # failed at once, no retry
    err = capsys.readouterr().err.strip()
    assert err.startswith("memq: error: MODEL.BACKBONE.WEIGHTS is not set") and err.endswith("(not retried)")
    assert "MODEL.BACKBONE_SMALL.WEIGHTS is not set" in err and "\n" not in err


def test_a_job_loads_the_installed_weights_verified_and_refuses_changed_ones(
    tmp_path: Path, job_params: dict[str, Any]
) -> None:
    rig = QueueRig(tmp_path)
    params = {**job_params, **install_tiny_weights(rig.root)}
    built = build(params, 0, [], rig.root)
    entries = read_manifest(rig.root)
    assert built.weights == {
        "MODEL.BACKBONE.WEIGHTS": f"tiny_vitb sha256 {entries['tiny_vitb'].sha256}",
        "MODEL.BACKBONE_SMALL.WEIGHTS": f"tiny_vits sha256 {entries['tiny_vits'].sha256}",
    }
    installed = verified_state_dict(rig.root, entries["tiny_vitb"], "x")
    vit = built.model.current.backbone.vit
    assert torch.equal(vit.patch_embed.proj.weight, installed["patch_embed.proj.weight"])
    assert torch.equal(vit.blocks[3].block.mlp.fc2.base.weight, installed["blocks.3.mlp.fc2.weight"])

    stored = entries["tiny_vits"].path(rig.root)
    stored.write_bytes(stored.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(PermanentError, match=rf"^MODEL\.BACKBONE_SMALL\.WEIGHTS: {stored} has sha256 "):
        build(params, 0, [], rig.root)
