"""`memq data` as a whole: a cheap import, and `synth` producing a directory that checks and loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from jobs.data.layout import list_subjects, open_images, open_subject
from jobs.mem.data import MemDataset


def test_memq_start_imports_no_science() -> None:
    code = (
        "import sys, memq.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in {'numpy', 'h5py', 'torch'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_synth_directory_checks_and_loads(tmp_path: Path, memq) -> None:
    ran = memq("data", "synth", "--out", tmp_path, "--subjects", 1, "--sessions", 2, "--voxels", 40,
               "--image-size", 16, "--feature-dim", 4, "--noise", 0.5, "--seed", 3)  # fmt: skip
    assert ran.code == 0, ran.err
    assert f"wrote subj01 to {tmp_path}: noise 0.5" in ran.out
    assert list_subjects(tmp_path) == ["subj01"]
    with open_subject(tmp_path / "subj01.h5") as f, open_images(tmp_path / "images.h5") as images:
        assert f.betas.shape == (750, 40) and f.n_sessions == 2 and images.features.shape[1] == 4
    assert memq("data", "check", tmp_path).code == 0
    sample = MemDataset(tmp_path / "subj01.h5", "train", None, tmp_path / "images.h5")[3]
    assert sample["y"].shape == (40,) and sample["prev_feats"].shape == (31, 4) and bool(sample["y"].isfinite().all())


def test_synth_bad_arguments(tmp_path: Path, memq) -> None:
    ran = memq("data", "synth", "--out", tmp_path, "--sessions", 1, "--predict-sessions", 1)
    assert ran.code == 2 and ran.err.startswith("error: need one voxel count per subject and at least one training")
    assert ran.err.count("\n") == 1 and not list(tmp_path.iterdir())
