"""Tiny Mem models, batches, synthetic data and training-job params for CPU tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from jobs.data.synth import SynthInfo, synthesize
from jobs.mem.config import MemConfig, load_config, tiny
from jobs.mem.model import MemModel
from jobs.mem.subject import SubjectInfo
from jobs.weights.install import install

from .helpers import plain_vit

N_VOXELS = {"subj01": 300, "subj02": 150}
ROI = np.array([140, 3, 77, 5, 120, 64, 9])  # positions in subj02's full voxel list, in ROI order


TINY_WEIGHTS = {"BACKBONE": "tiny_vitb", "BACKBONE_SMALL": "tiny_vits"}  # installed names


def install_tiny_weights(root: Path) -> dict[str, Any]:
    """tiny() naming "pretrained" ViT weights installed on ``root`` as `memq data weights --file` does."""
    overrides = tiny()
    config = load_config(overrides)
    torch.manual_seed(1234)
    for section, name in TINY_WEIGHTS.items():
        path = root / f"{name}.pth"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(plain_vit(config, section).state_dict(), path)
        install(root, name, file=path, model=getattr(config.MODEL, section).NAME)
        overrides[f"MODEL.{section}.WEIGHTS"] = name
    return overrides


@pytest.fixture
def weights_root(tmp_path: Path) -> Path:
    """The memq root the weights of ``tiny_overrides`` are installed on."""
    return tmp_path / "root"


@pytest.fixture
def tiny_overrides(weights_root: Path) -> dict[str, Any]:
    """tiny() with installed "pretrained" weights, as real runs have them.

    Models built with different seeds then share their frozen ViTs, so trainable state moves
    between them as it moves between checkpoints.
    """
    return install_tiny_weights(weights_root)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> SynthInfo:
    """The default synthetic dataset: 2 subjects (300 and 240 voxels), a planted map, 32 px images."""
    return synthesize(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="session")
def job_params(synth_data: SynthInfo) -> dict[str, Any]:
    """Params of a tiny, fast-learning training job on the synthetic data.

    Tuned for CPU tests: a large learning rate and batch reach most of the planted ceiling in
    about 200 steps; no warm-up; SYNC weighting from epoch 2 so that short runs exercise it.
    The frozen ViTs are random (asked for): a job draws them from its seed, as its soups do.
    """
    return {
        **tiny(),
        "DATASET.DIR": str(synth_data.data_dir),
        "OPTIMIZER.LR": 0.01,
        "OPTIMIZER.SCHEDULER.WARMUP_EPOCHS": 0,
        "TRAINER.BATCH_SIZE": 64,
        "LOSS.SYNC.SKIP_EPOCHS": 2,
    }


@pytest.fixture
def tiny_config(tiny_overrides: dict[str, Any]) -> MemConfig:
    return load_config(tiny_overrides)


@pytest.fixture
def full_coords() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.uniform(-50, 50, size=(n, 3)).astype(np.float32) for name, n in N_VOXELS.items()}


@pytest.fixture
def subjects(full_coords: dict[str, np.ndarray]) -> dict[str, SubjectInfo]:
    """Two subjects with different voxel counts; subj02 restricted to an ROI."""
    return {"subj01": SubjectInfo(full_coords["subj01"]), "subj02": SubjectInfo(full_coords["subj02"], voxels=ROI)}


@pytest.fixture
def build(tiny_config: MemConfig, subjects: dict[str, SubjectInfo], weights_root: Path) -> Callable[..., MemModel]:
    """Builds a seeded model: the tiny config and the two subjects unless given others."""

    def _build(
        config: MemConfig | None = None, infos: Mapping[str, SubjectInfo] | None = None, seed: int = 0
    ) -> MemModel:
        torch.manual_seed(seed)
        return MemModel(config or tiny_config, infos or subjects, weights_root=weights_root)

    return _build


@pytest.fixture
def make_batch() -> Callable[..., dict[str, torch.Tensor]]:
    """A random batch of one subject's samples, shaped as the data pipeline delivers it."""

    def _make(config: MemConfig, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        size, frames, bhv = config.DATASET.IMAGE_SIZE, config.DATASET.N_PREV_FRAMES, config.MODEL.COND.IN_DIM
        return {
            "img": torch.randn(batch, 3, size, size, generator=g),
            "prev_img": torch.randn(batch, 3, size, size, generator=g),
            "prev_feats": torch.randn(batch, frames - 1, config.MODEL.PREV_FEAT.DIM, generator=g),
            "bhv": torch.randn(batch, bhv, generator=g),
            "prev_bhvs": torch.randn(batch, frames, bhv, generator=g),
        }

    return _make
