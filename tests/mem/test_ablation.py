"""The ABLATION switches (the reference's EXPERIMENTAL.*): what each takes out of the built model and
of its batches, and the rows of grids/whole-brain.yaml against the reference's xdcac/xdea rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from jobs.mem.ablation import AblationConfig
from jobs.mem.build import Built, build, job_config
from jobs.mem.config import ConfigError, load_config
from jobs.mem.layers.groups import SubjectGroups

GRIDS = Path(__file__).resolve().parents[2] / "grids"

# The reference's column sets, written out (xdcac_ablation.py: answer = 0..7 + 21..34, memory = 8..18,
# time = 19..20) and the MODEL.COND.IN_DIM it set by hand for each row.
ANSWER = [0, 1, 2, 3, 4, 5, 6, 7, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34]
MEMORY = [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]
TIME = [19, 20]
IN_DIM = {"answer": 13, "memory": 24, "time": 33}

# grids/whole-brain.yaml's groups as the reference's switches: (USE_PREV_FRAME, USE_RETINA_MAPPER,
# USE_LAYER_SELECTOR, USE_BHV, USE_BHV_PASSTHROUGH, columns dropped), runs
REFERENCE_ROWS = {
    "full": ((True, True, True, True, True, []), 3),  # xdcac
    "wo-retina-mapper": ((True, False, True, True, True, []), 3),
    "wo-layer-selector": ((True, True, False, True, True, []), 3),
    "wo-memI": ((False, True, True, True, True, []), 3),
    "wo-answer": ((True, True, True, True, True, ["answer"]), 3),
    "wo-memC": ((True, True, True, True, True, ["memory"]), 3),
    "wo-time": ((True, True, True, True, True, ["time"]), 3),
    "wo-memIC": ((False, True, True, True, True, ["memory"]), 3),  # README rows xdcac lacks
    "baseline": ((False, True, True, False, False, []), 3),
    "after": ((True, True, True, True, True, []), 1),  # xdea
    "before": ((False, True, True, False, False, []), 1),
}


def _built(params: dict[str, Any], root: Path, **switches: Any) -> Built:
    return build({**params, "DATASET.SUBJECTS": ["subj01"], **switches}, 0, [], root)


def _batch(built: Built, n: int = 8) -> dict[str, torch.Tensor]:
    dataset = built.data.datasets("val1")[0]
    samples = [dataset[i] for i in range(n)]
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k not in ("subject", "index")}


def _predict(built: Built, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return built.model.eval()(batch, "subj01")


def _names(built: Built) -> set[str]:
    return {name.split(".")[0] for name, _ in built.model.named_parameters()}


def test_column_sets_are_the_references() -> None:
    for name, expected in (("answer", ANSWER), ("memory", MEMORY), ("time", TIME)):
        kept = AblationConfig(DROP_COLUMNS=[name]).columns
        assert kept == tuple(c for c in range(35) if c not in expected)
        assert len(kept) == IN_DIM[name] == load_config({"ABLATION.DROP_COLUMNS": [name]}).behaviour_dim
    assert AblationConfig().columns is None
    with pytest.raises(ConfigError, match="drops every behaviour column"):
        load_config({"ABLATION.DROP_COLUMNS": ["answer", "memory", "time"]})
    with pytest.raises(ConfigError, match=r"MODEL\.COND\.IN_DIM is 30"):
        load_config({"ABLATION.DROP_COLUMNS": ["time"], "MODEL.COND.IN_DIM": 30})


def test_without_memory_images_nothing_of_the_past_is_built_or_read(job_params: dict[str, Any],
                                                                    tmp_path: Path) -> None:
    full = _built(job_params, tmp_path)
    built = _built(job_params, tmp_path, **{"ABLATION.MEMORY_IMAGES": False})
    assert {"previous", "memory", "behav_pt_prev"} <= _names(full)
    assert built.model.previous is None and built.model.memory is None and built.model.behav_pt_prev is None
    assert not {"previous", "memory", "behav_pt_prev"} & _names(built)
    assert built.weights["MODEL.BACKBONE_SMALL.WEIGHTS"].startswith("not used")
    batch = _batch(built)
    assert set(batch) == {"img", "bhv", "y"} and set(_batch(full)) == {"img", "bhv", "y", "prev_img", "prev_feats",
                                                                       "prev_bhvs"}  # fmt: skip
    assert built.data.datasets("val1")[0].features.shape[0] == 0  # no memory feature read
    # the readout still spans the full d_model: the missing features enter it as zeros
    readout = built.model.readout["subj01"]
    assert readout.weight.shape[1] == built.config.MODEL.d_model == full.model.readout["subj01"].weight.shape[1]
    assert _predict(built, batch).shape == (8, built.model.n_voxels["subj01"])


def test_dropped_columns_are_not_read(job_params: dict[str, Any], tmp_path: Path) -> None:
    built = _built(job_params, tmp_path, **{"ABLATION.DROP_COLUMNS": ["answer"]})
    dataset = built.data.datasets("val1")[0]
    batch = _batch(built)
    with h5py.File(Path(job_params["DATASET.DIR"]) / "subj01.h5", "r") as f:
        behaviour = f["behavior"][()]
    trials = dataset.indices[:8]
    kept = [c for c in range(35) if c not in ANSWER]
    assert batch["bhv"].shape == (8, 13) and batch["prev_bhvs"].shape[-1] == 13
    np.testing.assert_array_equal(batch["bhv"].numpy(), behaviour[trials][:, kept])
    embeds = [built.model.current.behav_embed, built.model.previous.behav_embed, built.model.memory.behav_embed,
              built.model.behav_pt, built.model.behav_pt_prev]  # fmt: skip
    for embed in embeds:
        assert {layer[0].in_features for layer in embed.subject.values()} == {13}


def test_without_behaviour_the_prediction_ignores_it(job_params: dict[str, Any], tmp_path: Path) -> None:
    """Baseline: no behaviour, no passthrough, no memory. Changing the behaviour changes the full
    model's prediction and not the baseline's (eval mode: no dropout, no retina jitter)."""
    full = _built(job_params, tmp_path)
    baseline = _built(job_params, tmp_path, **{"ABLATION.MEMORY_IMAGES": False, "ABLATION.BEHAVIOUR": False,
                                               "ABLATION.BEHAVIOUR_PASSTHROUGH": False})  # fmt: skip
    assert baseline.model.behav_pt is None and "behav_pt" in _names(full)
    for built in (full, baseline):
        batch = _batch(built)
        other = {**batch, "bhv": torch.randn_like(batch["bhv"])}
        if "prev_bhvs" in batch:
            other["prev_bhvs"] = torch.randn_like(batch["prev_bhvs"])
        changed = not torch.allclose(_predict(built, batch), _predict(built, other))
        assert changed is (built is full)


def test_without_retina_mapper_or_layer_selector(job_params: dict[str, Any], tmp_path: Path) -> None:
    no_mapper = _built(job_params, tmp_path, **{"ABLATION.RETINA_MAPPER": False})
    assert no_mapper.model.retina_mapper is None and len(no_mapper.model.current.conv_heads) == 0
    assert not {"retina_mapper"} & _names(no_mapper)
    no_selector = _built(job_params, tmp_path, **{"ABLATION.LAYER_SELECTOR": False})
    assert no_selector.model.layer_selector is None and "layer_selector" not in _names(no_selector)
    for built in (no_mapper, no_selector):
        batch = _batch(built)
        out = built.model.train().forward_subjects({"subj01": batch})
        assert out.preds["subj01"].shape == (8, built.model.n_voxels["subj01"])
        assert (float(out.regularizer.detach()) == 0.0) is (built is no_selector)
    # with neither, nor memory and passthrough, a voxel reads the class features' mean over the
    # layers and zeros: y = mean_l(cls_l) . W[:, :width] / d_model + b
    off = {"ABLATION.RETINA_MAPPER": False, "ABLATION.LAYER_SELECTOR": False, "ABLATION.MEMORY_IMAGES": False,
           "ABLATION.BEHAVIOUR_PASSTHROUGH": False}  # fmt: skip
    bare = _built(job_params, tmp_path, **off)
    batch = _batch(bare)
    model = bare.model.eval()
    with torch.inference_mode():
        _, cls = model.current(batch["img"], batch["bhv"], SubjectGroups(("subj01",), (8,)))
        weight, bias = model.readout["subj01"].weight.double(), model.readout["subj01"].bias.double()
        expected = cls.mean(-1).double() @ weight[:, : cls.shape[1]].T / weight.shape[1] + bias
        assert torch.allclose(model(batch, "subj01").double(), expected, atol=1e-5)


def test_grid_rows_are_the_references_rows(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("submit", GRIDS / "whole-brain.yaml", "--dry-run", "--json")
    assert result.code == 0, result
    jobs = json.loads(result.out)["jobs"]
    assert len(jobs) == 36
    text = cli("submit", GRIDS / "whole-brain.yaml", "--dry-run")
    assert "whole-brain: 36 jobs (dry run, nothing written)" in text.out
    by_group: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        by_group.setdefault(job["group"], []).append(job)
    topyneck, (gather,), (report,) = by_group.pop("topyneck"), by_group.pop("gather"), by_group.pop("report")
    assert report["kind"] == "eval.report" and report["gpus"] == 0
    assert sorted(j["params"]["REGULARIZER.LAYER"] for j in topyneck) == [3e-5, 1e-4, 3e-4, 1e-3, 3e-3]
    assert all(j["kind"] == "mem.topyneck" and j["params"]["stage"] == "train" for j in topyneck)
    assert all(job_config(j["params"]).MODEL.TOPYNECK_PATH is None for j in topyneck)
    assert gather["params"]["stage"] == "gather" and gather["gpus"] == 0
    assert {j["params"]["parts_dir"] for j in topyneck} == {gather["params"]["parts_dir"]}
    assert set(by_group) == set(REFERENCE_ROWS)
    for group, ((prev, mapper, selector, bhv, passthrough, dropped), runs) in REFERENCE_ROWS.items():
        assert len(by_group[group]) == runs, group
        for job in by_group[group]:
            config = job_config(job["params"])
            off = config.ABLATION
            got = (off.MEMORY_IMAGES, off.RETINA_MAPPER, off.LAYER_SELECTOR, off.BEHAVIOUR, off.BEHAVIOUR_PASSTHROUGH,
                   off.DROP_COLUMNS)  # fmt: skip
            assert got == (prev, mapper, selector, bhv, passthrough, dropped), group
            topyneck_path = gather["params"]["output"]
            assert topyneck_path == config.MODEL.TOPYNECK_PATH and job["params"]["soup_score"] is True
            assert config.DATASET.SUBJECTS == ["subj01"] and job["kind"] == "mem.train"
            # dev.yaml, xdcac's limits; xdea's dev_B.yaml: a ViT-B for T=0
            vit_width = 768 if group in ("after", "before") else 384
            assert vit_width == config.MODEL.BACKBONE.FEATURE_DIM
            assert (config.TRAINER.LIMIT_TRAIN_BATCHES, config.TRAINER.EARLY_STOP_PATIENCE) == (0.5, 30)
            assert (config.OPTIMIZER.LR, config.MODEL.COND.PASSTHROUGH_DIM, config.LOSS.SYNC.USE) == (1e-3, 16, False)
    assert {job["params"]["DATASET.DIR"] for job in by_group["after"] + by_group["before"]} == {"/data/alg23/fship-b2"}


@pytest.mark.parametrize(("edit", "message"), [
    ("ABLATION.DROP_COLUMNS: [tme]", "ABLATION.DROP_COLUMNS: Input should be 'answer', 'memory' or 'time' (got 'tme')"),
    ("ABLATION.DROP_COLUMNS: [answer, memory, time]",
     "ABLATION.DROP_COLUMNS drops every behaviour column; use ABLATION.BEHAVIOUR: false"),
    ("ABLATION.RETINA_MAPER: false", "ABLATION.RETINA_MAPER: not a config key (free grid parameters must be "
                                     "lower-case); did you mean ABLATION.RETINA_MAPPER?"),
])  # fmt: skip
def test_a_bad_switch_fails_at_submit_in_one_line(cli, tmp_path: Path, edit: str, message: str) -> None:  # type: ignore[no-untyped-def]
    text = (GRIDS / "whole-brain.yaml").read_text()
    line = text.splitlines().index("    params: {<<: *row, ABLATION.DROP_COLUMNS: [time]}") + 1
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace("ABLATION.DROP_COLUMNS: [time]", edit))
    random = ["--set", "MODEL.BACKBONE.WEIGHTS=random", "--set", "MODEL.BACKBONE_SMALL.WEIGHTS=random"]
    result = cli("--root", tmp_path / "root", "submit", path, *random)
    assert (result.code, result.out, result.err) == (2, "", f"error: {path}:{line}: {message}\n")
    assert not (tmp_path / "root").exists()
