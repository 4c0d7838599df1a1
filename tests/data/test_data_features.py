"""`memq data cache-features`: features of installed (verified) weights, resumable, never downloading."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from jobs.data.layout import FEATURES_PENDING, FEATURES_SOURCE, ImageWriter, open_images

MODEL = "vit_small_patch14_dinov2.lvd142m"  # the ViT-L/14 recipe at test size: same family, 384-d
SIZE = 28  # two patches of 14 per side
N_IMAGES = 40


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, memq) -> tuple[Path, torch.nn.Module]:
    """A memq root with the weights of a random ViT-S/14 installed as ``feat``; the model."""
    torch.manual_seed(7)
    model = timm.create_model(MODEL, pretrained=False, num_classes=0, img_size=SIZE).eval()
    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    root = path.parent / "root"
    ran = memq("--root", root, "data", "weights", "feat", "--file", path, "--model", MODEL)
    assert ran.code == 0, ran.err
    return root, model


def _images_dir(path: Path) -> np.ndarray:
    images = np.random.default_rng(0).integers(0, 256, (N_IMAGES, 3, SIZE, SIZE), dtype=np.uint8)
    path.mkdir()
    with ImageWriter(path / "images.h5", np.arange(N_IMAGES) * 3, SIZE, 1024, {FEATURES_SOURCE: FEATURES_PENDING}) as w:
        w.append(images, np.zeros((N_IMAGES, 1024)))
    return images


def _expected(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model((torch.from_numpy(images).float() / 255 - mean) / std).numpy()


def _args(data: Path, root: Path, *more: object, weights: object = "feat") -> list[object]:
    return ["--root", root, "data", "cache-features", data, "--weights", weights, "--model", MODEL,
            "--image-size", SIZE, *more]  # fmt: skip


def test_features_of_the_given_weights(weights, tmp_path: Path, memq) -> None:
    root, model = weights
    images = _images_dir(tmp_path / "data")
    ran = memq(*_args(tmp_path / "data", root, "--batch-size", 16))
    assert ran.code == 0, ran.err
    sha256 = json.loads((root / "weights/manifest.json").read_text())["feat"]["sha256"]
    with open_images(tmp_path / "data/images.h5") as f:
        assert f.feature_dim == 384 and np.array_equal(f.images[()], images)
        assert f.file.attrs[FEATURES_SOURCE] == f"timm {MODEL} at {SIZE}px, feat sha256 {sha256}"
        features = f.features[()].astype(np.float32)
    np.testing.assert_allclose(features, _expected(model, images), atol=2e-2, rtol=1e-2)
    again = memq(*_args(tmp_path / "data", root))
    assert again.code == 0 and "are there, skipped" in again.out
    assert not list((tmp_path / "data").glob(".*"))


def test_killed_run_resumes(weights, tmp_path: Path, memq) -> None:
    root, model = weights
    images = _images_dir(tmp_path / "data")
    args = [str(a) for a in _args(tmp_path / "data", root, "--batch-size", 16)]
    driver = f"""
import os, sys
import jobs.data.features as features
real, calls = features._prepare, []
def dying(*a):
    calls.append(1)
    if len(calls) == 3:
        os._exit(9)
    return real(*a)
features._prepare = dying
sys.argv = ["memq", *{args!r}]
from memq.cli import main
main()
"""
    assert subprocess.run([sys.executable, "-c", driver], capture_output=True).returncode == 9
    with h5py.File(tmp_path / "data/.images.h5.features.partial.h5") as work:
        assert work.attrs["n_done"] == 32
    with open_images(tmp_path / "data/images.h5") as f:
        assert f.file.attrs[FEATURES_SOURCE] == FEATURES_PENDING  # the store itself is untouched
    ran = memq(*args)
    assert ran.code == 0 and "resuming after 32 of 40 images" in ran.out
    with open_images(tmp_path / "data/images.h5") as f:
        np.testing.assert_allclose(f.features[()].astype(np.float32), _expected(model, images), atol=2e-2, rtol=1e-2)


def test_weights_are_never_guessed(weights, tmp_path: Path, memq, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = weights
    _images_dir(tmp_path / "data")
    data = tmp_path / "data"
    monkeypatch.delenv("MEMQ_ROOT", raising=False)
    nope = tmp_path / "nope.safetensors"
    cases = [
        (["data", "cache-features", data], "no memq root given"),
        (["--root", root, "data", "cache-features", data], "weights: no weights named 'dinov2_vitl14' on the root"),
        (_args(data, root, weights=nope), f"weights: '{nope}' is not a weights name"),
        ([*_args(data, root), "--model", "vit_base_patch14_dinov2"], f"weights: feat holds weights of {MODEL}, not"),
        (["data", "cache-features", tmp_path / "empty", "--weights", "random"], "images.h5: no such file"),
    ]
    for args, message in cases:
        ran = memq(*args)
        assert ran.code == 2 and message in ran.err and ran.err.count("\n") == 1, ran.err
    assert not list(data.glob(".*"))


def test_tampered_weights_are_refused(weights, tmp_path: Path, memq) -> None:
    root = shutil.copytree(weights[0], tmp_path / "root")
    (stored,) = (root / "weights").glob("feat.*.safetensors")
    data = bytearray(stored.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    stored.write_bytes(bytes(data))
    _images_dir(tmp_path / "data")
    ran = memq(*_args(tmp_path / "data", root))
    assert ran.code == 2 and ran.err.count("\n") == 1, ran.err
    assert f"weights: {stored} has sha256 " in ran.err and "run `memq data weights feat` again" in ran.err
    with open_images(tmp_path / "data/images.h5") as f:
        assert f.file.attrs[FEATURES_SOURCE] == FEATURES_PENDING


def test_job_kind_with_random_weights(tmp_path: Path, job_ctx, memq) -> None:
    from jobs.data.features import run

    _images_dir(tmp_path / "data")
    ctx = job_ctx.claim("data.cache_features", data_dir=str(tmp_path / "data"), weights="random", model=MODEL,
                        image_size=SIZE, batch_size=25)
    run(ctx)
    assert job_ctx.progress(ctx) == {"step": "memory features", "done": N_IMAGES, "total": N_IMAGES}
    ran = memq("data", "check", tmp_path / "data")
    assert "images.h5: ok: 40 images 28x28, 384-d features (timm" in ran.out and "random init" in ran.out
