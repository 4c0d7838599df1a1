"""Kind mem.topyneck: per-subject training parts, the gather, and training with the result frozen."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from jobs.mem.build import build
from jobs.mem.model import TOPYNECK_GROUPS, read_topyneck
from jobs.mem.train import topyneck
from jobs.mem.train.fit import fit, job_config
from jobs.mem.train.topyneck import part_path
from memq.grid import expand, load_grid_file
from memq.runner import PermanentError

from .independent import mean_of, mean_r, split_r
from .jobs_helpers import build_model, result
from .queue_rig import QueueRig

GRIDS = Path(__file__).resolve().parents[2] / "grids"
SUBJECTS = ["subj01", "subj02"]


def _fake_part(real: dict[str, Any], regularizer: float, score: float) -> dict[str, Any]:
    """Another regulariser's part for the same subject: other tensors, a chosen score."""
    tensors = {k: torch.randn_like(v) for k, v in real["tensors"].items()}
    return {"tensors": tensors, "regularizer": regularizer, "val": score, "test": score, "score": score}


@pytest.fixture(scope="module")
def trained_parts(tmp_path_factory: pytest.TempPathFactory, job_params: dict[str, Any]) -> dict[str, Any]:
    """One train-stage job on both subjects (a short run): its parts and result."""
    tmp = tmp_path_factory.mktemp("topyneck")
    rig = QueueRig(tmp)
    params = {
        **job_params,
        "stage": "train",
        "parts_dir": str(tmp / "parts"),
        "DATASET.SUBJECTS": SUBJECTS,
        "REGULARIZER.LAYER": 1e-4,
        "TRAINER.MAX_EPOCHS": 2,
        "TRAINER.LIMIT_TRAIN_BATCHES": 0.1,
    }
    job_id = rig.submit("mem.topyneck", params)
    ctx = rig.claim()
    topyneck.run(ctx)
    return {"params": params, "parts_dir": tmp / "parts", "result": result(ctx.job_dir),
            "rows": rig.checkpoints(job_id), "root": ctx.root}


def test_train_stage_writes_scored_parts(trained_parts: dict[str, Any]) -> None:
    """The parts are the topyneck tensors of the run's greedy soup, scored over whole splits: the
    soup and every score recomputed here from the checkpoint files and the betas in the subject
    files (the greedy choice on val1, the mean of its members, per-voxel r in NumPy). In so short
    a run the last epoch is the best and averaging it with an earlier one scores lower on val1:
    the soup is the best checkpoint alone, and tests/ensemble/test_soup_predict.py covers soups
    of several members."""
    parts_dir, summary, params = trained_parts["parts_dir"], trained_parts["result"], trained_parts["params"]
    rows = sorted(trained_parts["rows"], key=lambda r: (-r["metric"], r["id"]))  # best first
    assert len({row["metric"] for row in rows}) == len(rows) >= 2  # one per epoch, in an unambiguous order
    states = []
    for row in rows:
        data = Path(row["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        states.append(torch.load(row["path"], weights_only=True))
    built = build(params, 0, [], trained_parts["root"])
    scores: dict[tuple[int, ...], dict[str, dict[str, np.ndarray]]] = {}

    def r(members: tuple[int, ...], split: str) -> dict[str, np.ndarray]:
        if members not in scores:
            soup = mean_of([states[i] for i in members])
            scores[members] = {s: split_r(built, params, soup, s) for s in ("val1", "val2")}
        return scores[members][split]

    chosen: tuple[int, ...] = (0,)  # greedy on val1: a checkpoint joins if the average scores higher
    for candidate in range(1, len(rows)):
        tried, best = mean_r(r((*chosen, candidate), "val1")), mean_r(r(chosen, "val1"))
        assert abs(tried - best) > 1e-4  # far from a tie: rounding cannot flip the choice
        if tried > best:
            chosen = (*chosen, candidate)
    soup = summary["topyneck_soup"]
    assert soup["members"] == [rows[i]["id"] for i in chosen] and soup["selection_split"] == "val1"
    assert soup["val1"] == pytest.approx(mean_r(r(chosen, "val1")), abs=1e-5)
    assert soup["val2"] == pytest.approx(mean_r(r(chosen, "val2")), abs=1e-5)
    model = build_model(params)
    expected_tensors = mean_of([states[i] for i in chosen])
    for subject in SUBJECTS:
        path = part_path(parts_dir, subject, 1e-4)
        assert path == parts_dir / subject / "layer-0.0001.pt"
        part = torch.load(path, weights_only=True)
        assert part["regularizer"] == 1e-4
        assert set(part["tensors"]) == {k for k in model.topyneck_state_dict() if k.split(".")[1] == subject}
        for key, value in part["tensors"].items():
            assert torch.allclose(value, expected_tensors[key], atol=1e-6), key
        val, test = float(r(chosen, "val1")[subject].mean()), float(r(chosen, "val2")[subject].mean())
        assert (part["val"], part["test"]) == pytest.approx((val, test), abs=1e-5)
        assert part["score"] == pytest.approx((val + test) / 2, abs=1e-5)
        assert summary["topyneck_parts"][subject] == {"path": str(path), "regularizer": 1e-4, "val": part["val"],
                                                      "test": part["test"], "score": part["score"]}


def _gather(tmp_path: Path, parts_dir: Path, subjects: list[str]) -> tuple[Path, Any]:
    rig = QueueRig(tmp_path / "queue")
    output = tmp_path / "out" / "topyneck.pth"
    rig.submit(
        "mem.topyneck",
        {"stage": "gather", "DATASET.SUBJECTS": subjects, "parts_dir": str(parts_dir), "output": str(output)},
    )
    ctx = rig.claim()
    topyneck.run(ctx)
    return output, ctx


def test_gather_picks_the_best_regulariser_per_subject(
    tmp_path: Path, trained_parts: dict[str, Any], job_params: dict[str, Any]
) -> None:
    parts_dir = trained_parts["parts_dir"]
    real = {s: torch.load(part_path(parts_dir, s, 1e-4), weights_only=True) for s in SUBJECTS}
    better = _fake_part(real["subj01"], 3e-4, score=real["subj01"]["score"] + 0.1)
    worse = _fake_part(real["subj02"], 3e-5, score=real["subj02"]["score"] - 0.1)
    torch.save(better, part_path(parts_dir, "subj01", 3e-4))
    torch.save(worse, part_path(parts_dir, "subj02", 3e-5))

    output, ctx = _gather(tmp_path, parts_dir, SUBJECTS)

    state = read_topyneck(str(output))
    assert state.keys() == real["subj01"]["tensors"].keys() | real["subj02"]["tensors"].keys()
    for key, value in state.items():
        source = better if key.split(".")[1] == "subj01" else real["subj02"]
        assert torch.equal(value, source["tensors"][key]), key
    chosen = result(ctx.job_dir)["subjects"]
    assert {s: c["regularizer"] for s, c in chosen.items()} == {"subj01": 3e-4, "subj02": 1e-4}

    model = build_model(job_params)  # both subjects, whole brain
    model.load_topyneck(state, source=str(output))
    assert all(not p.requires_grad for group in TOPYNECK_GROUPS for p in getattr(model, group).parameters())


def test_gather_without_a_subject_fails_naming_it(tmp_path: Path, trained_parts: dict[str, Any]) -> None:
    with pytest.raises(PermanentError, match="no trained topyneck of subject subj03"):
        _gather(tmp_path, trained_parts["parts_dir"], [*SUBJECTS, "subj03"])
    assert not (tmp_path / "out").exists()


def test_training_with_a_topyneck_keeps_it_frozen(
    tmp_path: Path, trained_parts: dict[str, Any], job_params: dict[str, Any]
) -> None:
    output, _ = _gather(tmp_path, trained_parts["parts_dir"], SUBJECTS)
    rig = QueueRig(tmp_path / "train")
    params = {
        **job_params,
        "MODEL.TOPYNECK_PATH": str(output),
        "TRAINER.MAX_EPOCHS": 1,
        "TRAINER.LIMIT_TRAIN_BATCHES": 0.05,
    }
    job_id = rig.submit("mem.train", params)
    ctx = rig.claim()
    model = fit(ctx).lit.model

    frozen = model.topyneck_state_dict()
    assert frozen.keys() == read_topyneck(str(output)).keys()
    for key, value in read_topyneck(str(output)).items():
        assert torch.equal(frozen[key], value), key
    params_by_name = dict(model.named_parameters())
    assert all(not params_by_name[key].requires_grad and params_by_name[key].grad is None for key in frozen)
    (checkpoint,) = rig.checkpoints(job_id)
    saved = torch.load(checkpoint["path"], weights_only=True)
    assert not any(key.split(".")[0] in TOPYNECK_GROUPS for key in saved)  # trained, not frozen, weights only


def test_grid_files_train_24_parts_and_gather_the_xvbc_topyneck() -> None:
    grid, source = load_grid_file(GRIDS / "topyneck.yaml")
    spec = expand(grid, source)
    train = [job for job in spec.jobs if job.group == "train"]
    (gather,) = [job for job in spec.jobs if job.group == "gather"]
    runs = {(job.params["DATASET.SUBJECTS"][0], job.params["REGULARIZER.LAYER"]) for job in train}
    assert len(train) == len(runs) == 24
    assert {reg for _, reg in runs} == {3e-4, 1e-4, 3e-5}
    assert all(job.params["stage"] == "train" and job.gpus == 1 for job in train)
    assert {g.name: g.after for g in spec.groups} == {"train": (), "gather": ("train",)}
    assert gather.params["stage"] == "gather" and gather.gpus == 0
    assert sorted(gather.params["DATASET.SUBJECTS"]) == sorted({subject for subject, _ in runs})
    settings = job_config(train[0].params)
    assert (settings.TRAINER.BATCH_SIZE, settings.LOSS.SYNC.USE, settings.TRAINER.MAX_EPOCHS) == (8, False, 1000)
    assert (settings.TRAINER.LIMIT_TRAIN_BATCHES, settings.TRAINER.LIMIT_VAL_BATCHES) == (0.1, 0.5)
    assert (settings.OPTIMIZER.SCHEDULER.WARMUP_EPOCHS, settings.TRAINER.EARLY_STOP_PATIENCE) == (10, 30)
    assert settings.MODEL.TOPYNECK_PATH is None

    xvbc = yaml.safe_load((GRIDS / "xvbc.yaml").read_text())
    assert xvbc["defaults"]["params"]["MODEL.TOPYNECK_PATH"] == gather.params["output"]
    assert gather.params["parts_dir"] == train[0].params["parts_dir"]
    assert len(expand(*load_grid_file(GRIDS / "xvbc.yaml")).jobs) == 111
