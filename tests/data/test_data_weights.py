"""`memq data weights` and the weights names of grids: installed once with their sha256, checked at
submit, never silently random. No network: every weights file is written here (HF_HUB_OFFLINE)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from jobs.weights.install import install
from jobs.weights.load import verified_state_dict
from jobs.weights.manifest import WeightsError, lookup

REPO = Path(__file__).parents[2]
TINY = "vit_small_patch14_dinov2"


def _manifest(root: Path) -> dict:
    return json.loads((root / "weights/manifest.json").read_text())


def _fake_dinov2(path: Path, width: int, seed: int = 0) -> Path:
    """A small state dict with a DINOv2 ViT's class token width (all that installing checks)."""
    g = torch.Generator().manual_seed(seed)
    torch.save({"cls_token": torch.randn(1, 1, width, generator=g), "pos_embed": torch.randn(1, 5, width, generator=g)},
               path)
    return path


def test_a_file_is_installed_once_with_its_sha256(tmp_path: Path, memq) -> None:
    root, source = tmp_path / "root", tmp_path / "mine.pth"
    state = {"cls_token": torch.randn(1, 1, 8), "blocks.0.attn.qkv.weight": torch.randn(24, 8)}
    torch.save(state, source)
    ran = memq("--root", root, "data", "weights", "mine", "--file", source, "--model", TINY)
    assert ran.code == 0, ran.err
    entry = _manifest(root)["mine"]
    stored = root / "weights" / entry["file"]
    assert entry["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest() and entry["size"] == stored.stat().st_size
    assert entry["file"] == f"mine.{entry['sha256'][:16]}.safetensors"  # a file never changes under its name
    assert entry["model"] == TINY and entry["source"] == str(source)
    assert entry["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert load_file(stored).keys() == state.keys()  # stored as safetensors: loads run no pickle
    assert all(torch.equal(load_file(stored)[k], v) for k, v in state.items())
    assert f"mine: {TINY}, 0.0 MB, sha256 {entry['sha256']}" in ran.out

    manifest = (root / "weights/manifest.json").read_bytes()
    again = memq("--root", root, "data", "weights", "mine", "--file", source, "--model", TINY)
    assert again.code == 0 and "mine: already installed" in again.out
    assert (root / "weights/manifest.json").read_bytes() == manifest
    assert sorted(p.name for p in (root / "weights").iterdir()) == ["manifest.json", entry["file"]]

    torch.save({**state, "cls_token": torch.zeros(1, 1, 8)}, source)  # other bytes under the same name
    other = memq("--root", root, "data", "weights", "mine", "--file", source, "--model", TINY)
    assert other.code == 2 and other.err.count("\n") == 1, other.err
    assert "mine is installed from other bytes" in other.err and "under another name" in other.err
    assert (root / "weights/manifest.json").read_bytes() == manifest


def test_a_damaged_file_is_refused_at_load_and_repaired_by_installing_again(tmp_path: Path) -> None:
    root = tmp_path / "root"
    source = _fake_dinov2(tmp_path / "vits.pth", 384)
    entry = install(root, "dinov2_vits14", file=source)
    stored = entry.path(root)
    stored.write_bytes(stored.read_bytes()[:-1] + b"\0")  # same size: only the sha256 can tell
    found = lookup(root, "dinov2_vits14", "MODEL.BACKBONE_SMALL.WEIGHTS", "vit_small_patch14_dinov2.lvd142m")
    with pytest.raises(WeightsError, match=rf"^MODEL\.BACKBONE_SMALL\.WEIGHTS: {stored} has sha256 [0-9a-f]{{16}}"
                                           r"\.\.\., not the .* run `memq data weights dinov2_vits14` again$"):
        verified_state_dict(root, found, "MODEL.BACKBONE_SMALL.WEIGHTS")
    assert install(root, "dinov2_vits14", file=source) == entry
    assert torch.equal(verified_state_dict(root, entry, "x")["cls_token"], torch.load(source)["cls_token"])


def test_catalogue_names_take_only_weights_of_their_model(tmp_path: Path, memq) -> None:
    root = tmp_path / "root"
    small = _fake_dinov2(tmp_path / "vits.pth", 384)
    cases = [
        (["dinov2_vitb14", "--file", small], "dinov2_vitb14 needs vit_base_patch14_dinov2.lvd142m weights (cls_token "
                                             "width 768), this file has width 384"),
        (["dinov2_vits14", "--file", small, "--model", TINY], "dinov2_vits14 is vit_small_patch14_dinov2.lvd142m"),
        (["mine", "--file", small], "mine is not one of dinov2_vitb14, dinov2_vits14, dinov2_vitl14"),
        (["random", "--file", small, "--model", TINY], "'random' cannot name weights"),
        (["dinov2_vits14", "dinov2_vitb14", "--file", small], "--file installs one name"),
    ]
    for args, message in cases:
        ran = memq("--root", root, "data", "weights", *args)
        assert ran.code == 2 and message in ran.err and ran.err.count("\n") == 1, ran.err
    assert not (root / "weights").exists() or not list((root / "weights").glob("*.safetensors"))


def _hf_cache(home: Path, repo: str, tensors: dict[str, torch.Tensor]) -> Path:
    """A Hugging Face hub cache holding ``repo``'s model.safetensors, laid out as huggingface_hub does."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file(tensors, snapshot / "model.safetensors")
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot / "model.safetensors"


def test_weights_come_from_the_hugging_face_cache_offline(tmp_path: Path) -> None:
    home, root = tmp_path / "hf", tmp_path / "root"
    cached = _hf_cache(home, "timm/vit_small_patch14_dinov2.lvd142m", {"cls_token": torch.randn(1, 1, 384)})
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "MEMQ_ROOT": str(root)}
    env.pop("HF_HUB_CACHE", None)

    def weights(*names: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "memq", "data", "weights", *names]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    ran = weights("dinov2_vits14")
    assert ran.returncode == 0, ran.stderr
    entry = _manifest(root)["dinov2_vits14"]
    assert entry["source"] == "hf://timm/vit_small_patch14_dinov2.lvd142m/model.safetensors"
    assert entry["sha256"] == entry["source_sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()
    missing = weights("dinov2_vitb14")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr
    assert "timm/vit_base_patch14_dinov2.lvd142m/model.safetensors is not in the Hugging Face cache" in missing.stderr
    assert set(_manifest(root)) == {"dinov2_vits14"}


def _without_weights(tmp_path: Path) -> Path:
    text = (REPO / "grids/xvbc.yaml").read_text()
    kept = [line for line in text.splitlines(keepends=True) if ".WEIGHTS:" not in line]
    path = tmp_path / "xvbc.yaml"
    path.write_text("".join(kept))
    return path


def test_submit_refuses_a_grid_whose_backbones_would_be_random(tmp_path: Path, memq) -> None:
    root = tmp_path / "root"
    ran = memq("--root", root, "submit", _without_weights(tmp_path))
    assert ran.code == 2 and ran.err.count("\n") == 1, ran.err
    assert ran.err.startswith(f"error: {tmp_path / 'xvbc.yaml'}:")
    assert "MODEL.BACKBONE.WEIGHTS is not set (the frozen backbone would be random): run `memq data weights` and set " \
           "it to dinov2_vitb14, or to `random` for random init; MODEL.BACKBONE_SMALL.WEIGHTS is not set" in ran.err
    assert not root.exists()  # nothing written
    dry = memq("submit", _without_weights(tmp_path), "--dry-run")  # no root needed to see it
    assert dry.code == 2 and "MODEL.BACKBONE.WEIGHTS is not set" in dry.err


def test_submit_needs_the_named_weights_installed_and_jobs_name_them(tmp_path: Path, memq) -> None:
    root, grid = tmp_path / "root", REPO / "grids/xvbc.yaml"
    ran = memq("--root", root, "submit", grid)
    assert ran.code == 2 and ran.err.count("\n") == 1, ran.err
    line = next(i for i, text in enumerate(grid.read_text().splitlines(), 1) if "MODEL.BACKBONE.WEIGHTS" in text)
    assert ran.err.startswith(f"error: {grid}:{line}: MODEL.BACKBONE.WEIGHTS: no weights named 'dinov2_vitb14' on the "
                              f"root {root} (installed: none); run `memq data weights dinov2_vitb14`")
    assert not root.exists()

    for name, width in (("dinov2_vitb14", 768), ("dinov2_vits14", 384)):
        installed = memq("--root", root, "data", "weights", name, "--file", _fake_dinov2(tmp_path / name, width))
        assert installed.code == 0, installed.err
    ran = memq("--root", root, "submit", grid)
    assert ran.code == 0 and "111 jobs added" in ran.out, ran.err
    jobs = json.loads(memq("--root", root, "jobs", "--json").out)
    assert len(jobs) == 111
    assert {(j["params"]["MODEL.BACKBONE.WEIGHTS"], j["params"]["MODEL.BACKBONE_SMALL.WEIGHTS"]) for j in jobs} == {
        ("dinov2_vitb14", "dinov2_vits14")
    }
    swapped = memq("--root", root, "submit", grid, "--set", "MODEL.BACKBONE.WEIGHTS=dinov2_vits14")
    assert swapped.code == 2 and "MODEL.BACKBONE.WEIGHTS: dinov2_vits14 holds weights of " \
                                 "vit_small_patch14_dinov2.lvd142m, not of the configured model " \
                                 "vit_base_patch14_dinov2.lvd142m" in swapped.err
    path = memq("--root", root, "submit", grid, "--set", "MODEL.BACKBONE.WEIGHTS=/w/vitb14.pth")
    assert path.code == 2 and "'/w/vitb14.pth' is not a weights name (a path is not taken" in path.err
