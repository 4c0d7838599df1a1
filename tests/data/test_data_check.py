"""`memq data check`: exit 0 on a good directory; one named problem and exit 1 per kind of damage."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from jobs.data.synth import SynthInfo


def _replace(f: h5py.File, name: str, data: np.ndarray) -> None:
    del f[name]
    f.create_dataset(name, data=data)


def _leak_image(f: h5py.File) -> None:
    train, val1 = f["splits/train"][()], f["splits/val1"][()]
    _replace(f, "splits/train", np.sort(np.r_[train, val1[0]]))
    _replace(f, "splits/val1", val1[1:])


def _overlap_roi(f: h5py.File) -> None:
    _replace(f, "rois/r_1_1", np.r_[f["rois/r_1_1"][()], f["rois/r_1_2"][0]])


def _set(name: str, index: tuple, value: float) -> Callable[[h5py.File], None]:
    def change(f: h5py.File) -> None:
        f[name][index] = value

    return change


def _scale_session(f: h5py.File) -> None:
    f["betas"][750:1500] = f["betas"][750:1500] * 3


def _drop_roi(f: h5py.File) -> None:
    del f["rois/w_3"]


DAMAGE = {
    "splits share images": (_leak_image, "splits train and val1 share"),
    "ROIs overlap": (_overlap_roi, "the ROIs of atlas R1 do not partition"),
    "NaN betas": (_set("betas", (800, 5), np.nan), "betas of session 2 hold NaN or inf"),
    "betas not z-scored": (_scale_session, "betas are not z-scored per session and voxel"),
    "NaN behaviour": (_set("behavior", (3, 2), np.nan), "behavior holds NaN or inf"),
    "fill row": (_set("behavior", (-1, 0), 5.0), "the last behavior row is not the fill row"),
    "atlas incomplete": (_drop_roi, "atlas W lacks ROIs w_3"),
    "memory window": (_set("memory_index", (40, 31), 7), "memory_index is inconsistent"),
    "bad format": (lambda f: f.attrs.__setitem__("format_version", 9), "format version 9"),
}


@pytest.fixture
def copy(synth: SynthInfo, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(synth.data_dir, target)
    return target


def test_good_directory(copy: Path, memq) -> None:
    ran = memq("data", "check", copy)
    assert ran.code == 0, ran.out
    assert ran.out.splitlines()[-1] == f"{copy}: ok"
    assert "subj01.h5: ok: 4 sessions (3 with betas), 300 voxels" in ran.out
    assert "atlases A, W, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10" in ran.out


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_is_named(copy: Path, memq, damage: str) -> None:
    change, message = DAMAGE[damage]
    with h5py.File(copy / "subj02.h5", "r+") as f:
        change(f)
    ran = memq("data", "check", copy)
    assert ran.code == 1
    assert f"subj02.h5: PROBLEM: {message}" in ran.out or message in ran.out, ran.out
    assert "subj01.h5: ok" in ran.out and " problem" in ran.out.splitlines()[-1]


def test_missing_images_and_subjects(copy: Path, memq) -> None:
    with h5py.File(copy / "images.h5", "r+") as f:
        ids = f["ids"][()]
        _replace(f, "ids", np.r_[ids[:-1], ids[-1] + 100_000])  # the last image now has another id
    ran = memq("data", "check", copy)
    assert ran.code == 1 and "memory images are not in images.h5" in ran.out
    (copy / "images.h5").unlink()
    assert "images.h5: PROBLEM: missing" in memq("data", "check", copy).out
    for path in copy.glob("subj*.h5"):
        path.unlink()
    ran = memq("data", "check", copy)
    assert ran.code == 1 and "no subject file" in ran.out
    ran = memq("data", "check", copy / "nowhere")
    assert ran.code == 2 and ran.err.startswith(f"error: {copy / 'nowhere'}: no such directory")
