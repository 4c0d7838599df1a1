"""Synthetic data and tiny-model params shared by the ensemble tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs.data.synth import SynthInfo, synthesize
from jobs.mem.config import tiny

from .rig import Rig, grid_text

IMAGE_SIZE = 16  # tiny ViTs with 8 px patches: 4 tokens, fast enough for models in every test


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthInfo:
    """Two subjects (200 and 160 voxels): one training session, one predict session."""
    return synthesize(tmp_path_factory.mktemp("synth"), n_sessions=2, n_voxels=(200, 160), image_size=IMAGE_SIZE)


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory) -> SynthInfo:
    """Three training sessions (more val2 trials) for scores of predictions made from the planted map."""
    return synthesize(tmp_path_factory.mktemp("planted"), n_sessions=4)


@pytest.fixture(scope="session")
def params(synth: SynthInfo) -> dict[str, Any]:
    """A tiny model on the synthetic data (frozen ViTs initialised from the job's seed)."""
    return {**tiny(), "DATASET.DIR": str(synth.data_dir), "DATASET.IMAGE_SIZE": IMAGE_SIZE, "TRAINER.BATCH_SIZE": 64}


@pytest.fixture
def grid_file(tmp_path: Path, params: dict[str, Any]) -> Path:
    path = tmp_path / "tgrid.yaml"
    path.write_text(grid_text(params))
    return path


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)
