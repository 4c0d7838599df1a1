"""`memq data import-mindeye2` on a release written in MindEye2's formats from the fake NSD tree.

The same subject prepared from NSD (``nsd_prepared``) is the reference for everything the two
sources share: memory windows, splits and behaviour.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fake_mindeye2 import FakeMindEye2, write_fake_mindeye2, write_shard

from jobs.data.layout import open_images, open_subject
from tests.data.nsd_fake import FakeNsd

DT_COLUMNS = [11, 12, 13, 14]


@pytest.fixture(scope="module")
def release(nsd_tree: FakeNsd, tmp_path_factory: pytest.TempPathFactory) -> FakeMindEye2:
    return write_fake_mindeye2(tmp_path_factory.mktemp("me2"), nsd_tree, "subj01")


@pytest.fixture(scope="module")
def imported(release: FakeMindEye2, nsd_tree: FakeNsd, tmp_path_factory: pytest.TempPathFactory, memq) -> Path:
    out = tmp_path_factory.mktemp("me2_out")
    ran = memq("data", "import-mindeye2", "--src", release.src, "--out", out, "--nsd-dir", nsd_tree.nsd_dir)
    assert ran.code == 0, ran.err
    assert "cannot give" in ran.out and "within-day timing" in ran.out and "TIME responses.tsv" in ran.out
    return out


def _subject(path: Path) -> dict[str, object]:
    with open_subject(path) as f:
        return {
            "memory_index": f.memory_index(),
            "behavior": f.behavior(),
            "splits": {n: f.split(n) for n in ("train", "val1", "val2", "predict")},
            "betas": f.betas[()].astype(np.float64),
            "coords": f.coords(),
            "voxel_indices": f.voxel_indices(),
            "rois": {n: f.roi(n) for n in f.roi_names()},
            "space": f.space,
            "challenge": f.challenge,
        }


def test_trials_match_the_nsd_preparation(imported: Path, nsd_prepared: Path) -> None:
    me2, nsd = _subject(imported / "subj01.h5"), _subject(nsd_prepared / "subj01.h5")
    assert np.array_equal(me2["memory_index"], nsd["memory_index"])
    for name, trials in nsd["splits"].items():
        assert np.array_equal(me2["splits"][name], trials)
    np.testing.assert_allclose(me2["behavior"], nsd["behavior"], atol=1e-6)


def test_voxels_betas_rois_and_images(imported: Path, release: FakeMindEye2) -> None:
    s = _subject(imported / "subj01.h5")
    assert s["space"] == "func1pt8mm" and s["challenge"] is None
    assert np.array_equal(s["coords"], np.argwhere(release.mask))
    assert np.array_equal(s["voxel_indices"], np.flatnonzero(release.mask.ravel()))
    raw = np.nan_to_num(release.betas[:1500].astype(np.float64))
    for session in range(2):
        block = raw[750 * session : 750 * (session + 1)]
        z = (block - block.mean(0)) / block.std(0)
        np.testing.assert_allclose(s["betas"][750 * session : 750 * (session + 1)], z, atol=5e-3)
    labels = release.streams[release.mask]
    for k, name in enumerate(["RSC", "E", "MV", "ML", "MP", "V", "L", "P"]):
        assert np.array_equal(s["rois"][name], np.flatnonzero(labels == k))
    assert s["rois"]["R"].size == 0
    with open_images(imported / "images.h5") as f:
        assert set(np.unique(s["memory_index"])) - {-1} <= set(f.ids)
        rows = np.searchsorted(release.image_ids, f.ids)
        expected = np.rint(release.images[rows].astype(np.float32) * 255).astype(np.uint8)
        assert np.array_equal(f.images[()], expected)


def test_without_responses_time_is_estimated(
    release: FakeMindEye2, nsd_tree: FakeNsd, nsd_prepared: Path, tmp_path: Path, memq
) -> None:
    nsd = tmp_path / "nsd"
    for part in ("nsddata/experiments", "nsddata/ppdata/subj01/func1pt8mm"):
        (nsd / part).parent.mkdir(parents=True, exist_ok=True)
        (nsd / part).symlink_to(nsd_tree.nsd_dir / part)
    ran = memq(
        "data", "import-mindeye2", "--src", release.src, "--out", tmp_path / "out", "--nsd-dir", nsd, "--no-images"
    )
    assert ran.code == 0, ran.err
    assert "TIME estimated from day + slot time" in ran.out
    behavior = _subject(tmp_path / "out/subj01.h5")["behavior"]
    reference = _subject(nsd_prepared / "subj01.h5")["behavior"]
    others = [c for c in range(35) if c not in DT_COLUMNS]
    np.testing.assert_allclose(behavior[:, others], reference[:, others], atol=1e-6)
    # the fake sessions all start at the same time of day, so day + slot time recovers every time difference
    np.testing.assert_allclose(behavior[:, DT_COLUMNS], reference[:, DT_COLUMNS], atol=1e-4)
    assert not (tmp_path / "out/images.h5").exists()


def _broken_copy(release: FakeMindEye2, tmp_path: Path) -> Path:
    src = tmp_path / "release"
    shutil.copytree(release.src, src)
    return src


def test_bad_release_is_one_clear_error(release: FakeMindEye2, nsd_tree: FakeNsd, tmp_path: Path, memq) -> None:
    src = _broken_copy(release, tmp_path)
    shard = src / "wds/subj01/train/1.tar"
    cases = [
        (lambda: write_shard(shard, {"s0": {"behav": np.zeros((2, 17))}}), shard, "s0.behav.npy is [2, 17]"),
        (lambda: shutil.copy(src / "wds/subj01/train/0.tar", shard), src / "wds", "each once"),
        (lambda: shard.write_bytes(b"not a tar"), shard, "not a readable webdataset shard"),
        (lambda: (src / "betas_all_subj01_fp32_renorm.hdf5").unlink(), src, "missing MindEye2 betas"),
    ]
    for i, (damage, where, message) in enumerate(cases):
        saved = tmp_path / f"saved{i}"
        shutil.copytree(src, saved)
        damage()
        ran = memq("data", "import-mindeye2", "--src", src, "--out", tmp_path / "out", "--nsd-dir", nsd_tree.nsd_dir,
                   "--subjects", "1")  # fmt: skip
        shutil.rmtree(src)
        saved.rename(src)
        line = ran.err.strip()
        assert ran.code == 2 and "\n" not in line and line.startswith(f"error: {where}") and message in line, line
        assert not (tmp_path / "out").exists()


def test_voxel_count_must_match_the_mask(release: FakeMindEye2, nsd_tree: FakeNsd, tmp_path: Path, memq) -> None:
    import h5py

    src = _broken_copy(release, tmp_path)
    with h5py.File(src / "betas_all_subj01_fp32_renorm.hdf5", "w") as f:
        f.create_dataset("betas", data=release.betas[:, :-1])
    ran = memq("data", "import-mindeye2", "--src", src, "--out", tmp_path / "out", "--nsd-dir", nsd_tree.nsd_dir)
    assert ran.code == 2 and "nsdgeneral voxels, but the betas have" in ran.err and ran.err.count("\n") == 1
    assert not (tmp_path / "out").exists()
