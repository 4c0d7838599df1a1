"""The data-preparation switches of jobs/compat.py: each one's effect under the reference preset."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs import compat
from jobs.data.atlas_w import _scaled_cut, ward_clusters
from jobs.data.fsaverage import nc_threshold, nc_threshold_scaled, noise_ceiling, read_mgh
from jobs.data.layout import open_images, open_subject
from jobs.data.nsd import NsdSources
from jobs.data.nsd_images import IMAGE_JPEG_ATTR, write_nsd_images
from jobs.data.params import validate_cache_features, validate_prepare_nsd
from memq.errors import UserError
from tests.data.nsd_fake import FakeNsd


def reference_nc_search(nc: np.ndarray, target: float) -> float:
    """mem-spec 1.6, step by step: start at the target; halve while the added vertices' mean NC
    is above it, else x1.5; stop when the means agree within 0.001 (np.isclose)."""
    th, mean = target, 1.0
    while not np.isclose(mean, target, atol=0.001):
        th = th * 0.5 if mean > target else th * 1.5
        mean = nc[nc > th].mean()
    return th


def test_switch_nc_search_reproduces_the_x05_x15_search() -> None:
    rng = np.random.default_rng(3)
    nc = rng.beta(2, 5, size=5000)
    target = 0.45
    th = nc_threshold_scaled(nc, target)
    assert th == reference_nc_search(nc, target)
    assert th != nc_threshold(nc, target)  # bisection ends at another threshold
    assert abs(nc[nc > th].mean() - target) <= 0.001 + 1e-5 * target
    # where the reference would loop forever: a mean that cannot reach the target
    with pytest.raises(UserError, match="did not converge") as raised:
        nc_threshold_scaled(np.array([0.2, 0.9]), 0.5)
    assert "nc_search: bisect" in str(raised.value.hint)


def test_switch_nc_search_in_the_prepare_job(nsd_tree: FakeNsd, tmp_path: Path, job_ctx) -> None:
    from jobs.data.nsd import run

    common = {"nsd_dir": str(nsd_tree.nsd_dir), "alg_dir": str(nsd_tree.alg_dir), "subject": 2}
    attrs = {}
    for preset in compat.PRESETS:
        run(job_ctx.claim("data.prepare_nsd", **common, out=str(tmp_path / preset), compat=preset))
        with open_subject(tmp_path / preset / "subj02.h5") as f:
            attrs[preset] = dict(f.file.attrs)
    assert attrs["memq"]["nc_search"] == "bisect" and attrs["reference"]["nc_search"] == "scale"
    src = NsdSources(nsd_tree.nsd_dir, nsd_tree.alg_dir, "subj02")
    challenge = np.concatenate([np.load(src.challenge_mask(h)) for h in ("lh", "rh")]).astype(bool)
    n_vertices = challenge.size // 2
    snr = np.concatenate([read_mgh(src.ncsnr(h), "ncsnr", n_vertices, 1)[:, 0] for h in ("lh", "rh")])
    nc = noise_ceiling(snr)
    expected = reference_nc_search(np.where(challenge, np.nan, nc), float(np.nanmean(nc[challenge])))
    assert attrs["reference"]["nc_threshold"] == pytest.approx(expected)
    assert attrs["memq"]["nc_threshold"] != attrs["reference"]["nc_threshold"]
    # a per-switch override beats the preset; the recipe differs, so the memq file is not "complete"
    assert NsdSources(**{**_paths(nsd_tree), "nc_search": "scale"}).recipe() != NsdSources(**_paths(nsd_tree)).recipe()


def _paths(tree: FakeNsd) -> dict[str, object]:
    return {"nsd_dir": tree.nsd_dir, "alg_dir": tree.alg_dir, "subject": "subj02"}


def test_switch_w_search_reproduces_the_x15_x05_search() -> None:
    counts = {20.0: 12, 30.0: 7, 15.0: 9}  # too many -> x1.5, too few -> x0.5, then exactly 9
    tried = []

    def cut(threshold: float) -> np.ndarray:
        tried.append(threshold)
        return np.arange(1, counts[threshold] + 1)

    assert _scaled_cut(cut, 9).max() == 9
    assert tried == [20.0, 30.0, 15.0]
    with pytest.raises(UserError, match="no threshold for exactly 9") as raised:
        _scaled_cut(lambda th: np.arange(1, (12 if th >= 20 else 7) + 1), 9)  # oscillates forever
    assert "--w-search bisect" in str(raised.value.hint)

    centroids = np.random.default_rng(0).standard_normal((60, 8))
    labels = ward_clusters(centroids, search="scale")
    assert labels.max() == 8 and np.array_equal(labels, ward_clusters(centroids))  # same cut when it ends


def test_switch_image_jpeg_stores_a_q95_round_trip(nsd_tree: FakeNsd, nsd_prepared: Path, tmp_path: Path) -> None:
    for subject in ("subj01", "subj02"):
        shutil.copy(nsd_prepared / f"{subject}.h5", tmp_path / f"{subject}.h5")
    image_id = nsd_tree.subjects["subj01"].test_images[0]
    png = next((nsd_tree.alg_dir / "subj01" / "test_split/test_images").glob(f"*_nsd-{image_id:05d}.png"))
    plain = Image.open(png).convert("RGB").resize((16, 16), Image.Resampling.BICUBIC)
    encoded = io.BytesIO()
    plain.save(encoded, "JPEG", quality=95)
    expected = {"none": np.asarray(plain), "q95": np.asarray(Image.open(encoded).convert("RGB"))}
    assert not np.array_equal(expected["none"], expected["q95"])

    stored = {}
    for value in ("q95", "none"):  # the second run rewrites the store: made another way
        assert write_nsd_images(tmp_path, nsd_tree.alg_dir, image_size=16, image_jpeg=value)
        with open_images(tmp_path / "images.h5") as f:
            assert f.file.attrs[IMAGE_JPEG_ATTR] == value
            stored[value] = f.images[np.searchsorted(f.ids, image_id)].transpose(1, 2, 0)
        assert np.array_equal(stored[value], expected[value])
    assert not write_nsd_images(tmp_path, nsd_tree.alg_dir, image_size=16, image_jpeg="none")  # up to date


def test_data_switch_params_and_options(nsd_tree: FakeNsd, tmp_path: Path, memq, prepare_cmd) -> None:
    base = {"nsd_dir": "n", "alg_dir": "a", "out": "o", "subject": 1}
    validate_prepare_nsd({**base, "compat": "reference", "nc_search": "bisect"})
    with pytest.raises(ValueError, match="compat: 'paper' is not one of memq, reference"):
        validate_prepare_nsd({**base, "compat": "paper"})
    with pytest.raises(ValueError, match="nc_search: 'halve' is not one of bisect, scale"):
        validate_prepare_nsd({**base, "nc_search": "halve"})
    with pytest.raises(ValueError, match="image_jpeg: unknown parameter"):  # prepare_nsd writes no images
        validate_prepare_nsd({**base, "image_jpeg": "q95"})
    validate_cache_features({"data_dir": "d", "weights": "random", "image_jpeg": "q95"})
    assert compat.data_switch_values({"compat": "reference", "nc_search": "bisect"}, ("NC_SEARCH", "IMAGE_JPEG")) == {
        "NC_SEARCH": "bisect",
        "IMAGE_JPEG": "q95",
    }

    ran = memq(*prepare_cmd(nsd_tree, tmp_path / "out", "--compat", "paper"))
    assert ran.code == 2 and len(ran.err.strip().splitlines()) == 1
    assert "compat: 'paper' is not one of memq, reference" in ran.err and not (tmp_path / "out").exists()


EFFECT_TESTS = {
    "NC_SEARCH": test_switch_nc_search_in_the_prepare_job,
    "W_SEARCH": test_switch_w_search_reproduces_the_x15_x05_search,
    "IMAGE_JPEG": test_switch_image_jpeg_stores_a_q95_round_trip,
}


def test_every_data_switch_has_a_test_of_its_effect() -> None:
    assert set(EFFECT_TESTS) == {s.name for s in compat.switches("data")}
