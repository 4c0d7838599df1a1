"""mem.import in this process: a reference run's checkpoints registered as a job's; a grid of imports ensembled."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs.mem.build import build
from jobs.mem.ensemble.stage_params import validate_import
from jobs.mem.evaluate import mean_pearson
from jobs.mem.model import MemModel
from jobs.mem.reference.convert import convert
from jobs.mem.reference.import_job import reference_voxels
from memq.checkpoints import load_verified, sha256_file
from memq.runner import PermanentError

from ..mem import reference_net
from .rig import HALVES, Rig, grid_text

ROIS = HALVES[0]


def plain_vit(model: MemModel, prefix: str) -> dict[str, torch.Tensor]:
    """A backbone's frozen tensors under DINOv2's own names (no block, LoRA or AdaLN wrappers)."""
    trained = model.trainable_state_dict().keys()
    return {re.sub(r"\.block\.|\.base\.", ".", k.removeprefix(prefix)): v for k, v in model.state_dict().items()
            if k.startswith(prefix) and k not in trained}


def reference_files(tmp_path: Path, params: dict[str, Any], n: int, rois: list[str] | None = ROIS) -> list[Path]:
    """Lightning checkpoints of a reference run (``rois``; None: whole brain) on the job's data and
    frozen backbones, in ``tmp_path/<ROIs joined by +, or all>/``, and ``tmp_path/SHA256SUMS`` listing them."""
    built = build({**params, "DATASET.ROIS": rois}, 0, [], tmp_path)  # random backbones: no weights to look up
    config = built.config
    assert config.DATASET.DIR is not None
    voxels = reference_voxels(config.DATASET.DIR, built.data.subject_info(), rois)
    coords = {s: torch.from_numpy(v.reference_coords()) for s, v in voxels.items()}
    vits = {"backbone": plain_vit(built.model, "current.backbone.vit."),
            "backbone_prev": plain_vit(built.model, "previous.backbone.vit.")}
    paths = []
    for seed in range(n):
        path = tmp_path / ("+".join(rois) if rois else "all") / f"epoch={seed:06d}.ckpt"
        path.parent.mkdir(exist_ok=True)
        torch.save({"state_dict": reference_net.reference_state(config, coords, vits, seed), "epoch": seed}, path)
        paths.append(path)
    lines = [f"{sha256_file(p)}  {p.relative_to(tmp_path)}\n" for p in paths]
    with (tmp_path / "SHA256SUMS").open("a") as sums:
        sums.write("".join(lines))
    return paths


@pytest.fixture
def roi_params(params: dict[str, Any]) -> dict[str, Any]:
    return {**params, "DATASET.ROIS": ROIS}


def test_imported_checkpoints_are_registered_with_their_val1_score(
    rig: Rig, tmp_path: Path, roi_params: dict[str, Any]
) -> None:
    files = reference_files(tmp_path, roi_params, 2)
    ctx = rig.run("mem.import", {**roi_params, "checkpoints": [f"{tmp_path}/{{rois}}/*.ckpt"],
                                 "sha256sums": str(tmp_path / "SHA256SUMS")})
    rows = rig.store.checkpoints(job_ids=[ctx.job_id], kind="checkpoint")
    assert len(rows) == 2
    built = build(roi_params, 0, [], rig.root)
    config = built.config
    assert config.DATASET.DIR is not None
    voxels = reference_voxels(config.DATASET.DIR, built.data.subject_info(), ROIS)
    for row in rows:
        source = torch.load(files[row["step"]], weights_only=True)["state_dict"]
        expected = convert(source, built.model, voxels).state
        state = load_verified(row)  # registered with its sha256
        assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
        built.model.load_trainable_state_dict(state)
        assert row["metric"] == pytest.approx(mean_pearson(built, "val1"), abs=1e-6)
    assert rig.store.jobs(ids=[ctx.job_id])[0]["metrics"] == {"val_pearson": max(r["metric"] for r in rows),
                                                             "checkpoints": 2}


def test_a_grid_of_imports_goes_through_memq_ensemble(rig: Rig, tmp_path: Path, params: dict[str, Any],
                                                      cli) -> None:
    for rois in (None, *HALVES):
        reference_files(tmp_path, params, 1, rois)
    imports = {**params, "checkpoints": [f"{tmp_path}/{{rois}}/*.ckpt"], "sha256sums": str(tmp_path / "SHA256SUMS")}
    grid = tmp_path / "grid.yaml"
    grid.write_text(grid_text(imports, groups=[{"name": "all", "kind": "mem.import"},
                                               {"name": "A", "kind": "mem.import", "grid": {"DATASET.ROIS": HALVES}}]))
    assert cli(*rig.options(), "submit", grid).code == 0
    assert rig.drain() == 3
    result = cli(*rig.options(), "ensemble", grid, "--recipe", "uniform", "--out", tmp_path / "out", "--no-wait")
    assert result.code == 0, result.err
    assert rig.drain() == 3 + 6 + 1  # soups, predictions, combine
    manifest = json.loads((tmp_path / "out" / "ensemble.json").read_text())
    assert list(manifest["schemes"]) == ["all", "A"] and manifest["skipped"] == {}
    assert (tmp_path / "out" / "subj01" / "lh_pred_test.npy").is_file()


def test_a_file_whose_checksum_differs_is_refused_before_it_is_read(
    rig: Rig, tmp_path: Path, roi_params: dict[str, Any]
) -> None:
    (path,) = reference_files(tmp_path, roi_params, 1)
    torch.save({"state_dict": {}}, path)  # not the file the listing was made of
    sums = str(tmp_path / "SHA256SUMS")
    with pytest.raises(PermanentError, match=r"epoch=000000\.ckpt: sha256 [0-9a-f]{64}, expected [0-9a-f]{64}"):
        rig.run("mem.import", {**roi_params, "checkpoints": [str(path)], "sha256sums": sums})
    (tmp_path / "SHA256SUMS").write_text("")
    with pytest.raises(PermanentError, match=r"epoch=000000\.ckpt: sha256 [0-9a-f]{64}, expected no line in "):
        rig.run("mem.import", {**roi_params, "checkpoints": [str(path)], "sha256sums": sums})
    with pytest.raises(PermanentError, match=r"checkpoints: no file .*/RSC\+E\+MV\+ML/\*\.pt"):
        rig.run("mem.import", {**roi_params, "checkpoints": [f"{tmp_path}/{{rois}}/*.pt"]})
    assert rig.store.checkpoints(kind="checkpoint") == []


def test_submit_checks_the_files_param(params: dict[str, Any]) -> None:
    validate_import({**params, "checkpoints": ["/r/{rois}/{repeat}/*.ckpt"], "sha256sums": "SUMS", "roi": "E"})
    with pytest.raises(ValueError, match=r"mem.import params: checkpoints: Field required"):
        validate_import(params)
    with pytest.raises(ValueError, match=r"checkpoints: /r/\{roi\}\.ckpt: placeholders are \{rois\} and \{repeat\}"):
        validate_import({**params, "checkpoints": ["/r/{roi}.ckpt"]})
    with pytest.raises(ValueError, match=r"OPTIMZER\.LR: not a config key"):
        validate_import({**params, "checkpoints": ["a.ckpt"], "OPTIMZER.LR": 1.0})
