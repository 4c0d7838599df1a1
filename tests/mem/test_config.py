"""The typed Mem config: defaults, dotted overrides, and the submit-time params check."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jobs.mem.config import ConfigError, MemConfig, config_keys, load_config, tiny, validate_params


def test_defaults_follow_the_reference_recipe() -> None:
    c = load_config()
    m = c.MODEL
    assert m.BACKBONE.NAME == "vit_base_patch14_dinov2.lvd142m"
    assert m.BACKBONE_SMALL.NAME == "vit_small_patch14_dinov2.lvd142m"
    assert (m.BACKBONE.LAYERS, m.BACKBONE.CLS_DIMS) == ([2, 5, 8, 11], [1536, 1536, 1536, 768])
    assert (m.BACKBONE_SMALL.LAYERS, m.BACKBONE_SMALL.CLS_DIMS) == ([11], [384])
    assert (m.BACKBONE.LORA.RANK, m.BACKBONE.LORA.SCALE, m.BACKBONE.ADAPTIVE_LN.SCALE) == (4, 0.2, 0.5)
    assert m.BACKBONE.WEIGHTS is None and m.TOPYNECK_PATH is None
    assert (m.CONV_HEAD.WIDTH, m.CONV_HEAD.KERNEL, m.CONV_HEAD.DEPTH, m.CONV_HEAD.MAX_DIM) == (192, 5, 3, 1024)
    assert (m.COND.DIM, m.COND.IN_DIM, m.COND.DROPOUT, m.COND.PASSTHROUGH_DIM) == (256, 35, 0.2, 32)
    assert (m.COORDS_MLP.WIDTH, m.COORDS_MLP.DEPTH, m.RETINA_MAPPER.SIGMA) == (128, 3, 0.01)
    assert (m.PREV_FEAT.DIM, c.DATASET.N_PREV_FRAMES, m.MAX_TRAIN_VOXELS, m.CHUNK_SIZE) == (1024, 32, 25600, 25600)
    assert (m.VOXEL_OUTS.SHARED.USE, m.VOXEL_OUTS.SHARED.MLP.WIDTH) == (False, 1024)
    assert m.d_model == 384
    sync = c.LOSS.SYNC
    assert (c.LOSS.SMOOTH_L1_BETA, sync.USE, sync.SKIP_EPOCHS, sync.EMA_BETA, sync.UPDATE_RULE) == (
        0.01,
        True,
        20,
        0.9,
        "raw",
    )
    assert (c.OPTIMIZER.LR, c.OPTIMIZER.WEIGHT_DECAY, c.REGULARIZER.LAYER) == (3e-4, 3e-4, 3e-5)
    assert (c.OPTIMIZER.SCHEDULER.WARMUP_EPOCHS, c.OPTIMIZER.SCHEDULER.WARMUP_LR) == (20, 1e-6)
    t = c.TRAINER
    assert (t.PRECISION, t.GRADIENT_CLIP_VAL, t.BATCH_SIZE, t.MAX_EPOCHS) == ("16-mixed", 0.5, 32, 500)
    assert (t.LIMIT_TRAIN_BATCHES, t.LIMIT_VAL_BATCHES, t.EARLY_STOP_PATIENCE, t.SAVE_TOP_K) == (0.05, 0.25, 120, 10)
    assert c.DATASET.ROIS is None and c.DATASET.SUBJECTS is None


def test_dotted_overrides_are_applied() -> None:
    c = load_config({"OPTIMIZER.LR": 1e-3, "DATASET.ROIS": ["E"], "MODEL.TOPYNECK_PATH": "/x/topyneck.pth"})
    assert c.OPTIMIZER.LR == 1e-3
    assert c.DATASET.ROIS == ["E"]
    assert c.MODEL.TOPYNECK_PATH == "/x/topyneck.pth"
    assert c.OPTIMIZER.WEIGHT_DECAY == 3e-4  # untouched


def test_width_ratio_scales_the_head_widths() -> None:
    m = load_config({"MODEL.WIDTH_RATIO": 0.5}).MODEL
    assert (m.conv_width, m.prev_width, m.merge_width, m.passthrough_dim, m.d_model) == (96, 32, 32, 16, 192)
    with pytest.raises(ConfigError, match=r"^MODEL: .*COND.PASSTHROUGH_DIM"):
        load_config({"MODEL.WIDTH_RATIO": 0.01})


def test_yaml_style_exponent_strings_are_numbers() -> None:
    # PyYAML reads `3e-4` (no dot) as a string; the config still takes it as the number
    assert load_config({"OPTIMIZER.LR": "3e-4"}).OPTIMIZER.LR == 3e-4


def test_unknown_key_names_the_key_and_suggests() -> None:
    with pytest.raises(ConfigError, match=r"^OPTIMZER\.LR: not a config key; did you mean OPTIMIZER\.LR\?"):
        load_config({"OPTIMZER.LR": 1e-3})
    with pytest.raises(ConfigError, match=r"^MODEL\.BACKBONE: not a config key"):
        load_config({"MODEL.BACKBONE": {"NAME": "x"}})  # sections are not settable as a whole


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"OPTIMIZER.LR": "fast"}, "OPTIMIZER.LR"),
        ({"OPTIMIZER.LR": -1.0}, "OPTIMIZER.LR"),
        ({"DATASET.ROIS": "E"}, "DATASET.ROIS"),
        ({"DATASET.ROIS": []}, "DATASET.ROIS"),
        ({"DATASET.SUBJECTS": ["subj.01"]}, "DATASET.SUBJECTS"),
        ({"LOSS.SYNC.UPDATE_RULE": "cubic"}, "LOSS.SYNC.UPDATE_RULE"),
        ({"TRAINER.LIMIT_TRAIN_BATCHES": 1.5}, "TRAINER.LIMIT_TRAIN_BATCHES"),
        ({"MODEL.BACKBONE.KWARGS": {"depth": [1]}}, "MODEL.BACKBONE.KWARGS"),
        ({"MODEL.BACKBONE.CLS_DIMS": [1536, 768]}, "MODEL.BACKBONE"),
        ({"MODEL.BACKBONE.LAYERS": [5, 2, 8, 11]}, "MODEL.BACKBONE"),
        ({"MODEL.BACKBONE.CLS_DIMS": [1536, 1536, 1536, 384]}, "MODEL.BACKBONE"),
    ],
)
def test_bad_value_names_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(overrides)
    assert str(error.value).startswith(f"{key}: ")


def test_every_key_is_settable() -> None:
    defaults = MemConfig().model_dump()
    for key in config_keys():
        node = defaults
        for part in key.split("."):
            node = node[part]
        load_config({key: node})


def test_validate_params_allows_lowercase_free_parameters() -> None:
    validate_params({"roi": "E", "subj": "subj01", "OPTIMIZER.LR": 1e-3, "DATASET.ROIS": ["E"]})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"OPTIMZER.LR": 1e-3}, r"^OPTIMZER\.LR: not a config key .*did you mean OPTIMIZER\.LR\?"),
        ({"Roi": "E"}, r"^Roi: not a config key \(free grid parameters must be lower-case\)"),
        ({"optimizer.lr": 1e-3}, r"^optimizer\.lr: config keys are upper-case; did you mean OPTIMIZER\.LR\?"),
        ({"roi": "E", "OPTIMIZER.LR": "fast"}, r"^OPTIMIZER\.LR: "),
    ],
)
def test_validate_params_rejects(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_params(params)


def test_validate_params_reports_every_problem() -> None:
    with pytest.raises(ConfigError) as error:
        validate_params({"OPTIMZER.LR": 1, "TRAINER.MAX_EPOHCS": 2})
    assert str(error.value).count("\n") == 1


def test_tiny_preset_is_valid_and_small() -> None:
    c = load_config(tiny())
    assert c.MODEL.BACKBONE.KWARGS["embed_dim"] == c.MODEL.BACKBONE.FEATURE_DIM
    assert c.MODEL.d_model < 64
    assert c.MODEL.CHUNK_SIZE < 150  # the test subjects' voxels run in several chunks


def test_config_module_does_not_import_torch() -> None:
    code = "import sys, jobs.mem.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
