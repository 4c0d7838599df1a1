"""A MindEye2 release for one subject of a fake NSD tree, in the release's formats.

``betas_all_subjXX_fp32_renorm.hdf5`` (``betas`` [trials, voxels]), ``coco_images_224_float16.hdf5``
(``images`` [73000, 3, S, S], only the shown rows stored), webdataset shards
``wds/subjXX/train/{session-1}.tar`` (trials of non-shared images) and ``wds/subjXX/new_test/0.tar``
(shared1000 trials) with ``behav.npy`` [1, 17] per sample (-1 for NaN; RT also 0), and NSD's
``func1pt8mm/roi/{nsdgeneral,streams}.nii.gz`` in the NSD tree.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel
import numpy as np

from tests.data.nsd_fake import N_SHARED, FakeNsd

VOLUME = (6, 7, 8)


@dataclass
class FakeMindEye2:
    src: Path
    behav: np.ndarray  # [n, 17] as written
    betas: np.ndarray  # [n, n_voxels] as written
    mask: np.ndarray  # bool volume of the nsdgeneral voxels
    streams: np.ndarray  # label volume
    image_ids: np.ndarray  # rows written to the image file
    images: np.ndarray  # their float16 values


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write_shard(path: Path, samples: dict[str, dict[str, np.ndarray]]) -> None:
    """A webdataset tar: one ``KEY.NAME.npy`` member per array of each sample."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, arrays in samples.items():
            for name, array in arrays.items():
                data = _npy(array)
                info = tarfile.TarInfo(f"{key}.{name}.npy")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def behav_rows(tree: FakeNsd, subject: str) -> np.ndarray:
    c = tree.subjects[subject].responses
    n = c["RT"].size

    def minus1(x: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(x), -1.0, x)

    rt = minus1(c["RT"])
    rt[(rt == -1) & (np.arange(n) % 2 == 0)] = 0  # the release also writes "no RT" as 0
    shared = np.isin(c["73KID"], tree.subjectim[0, :N_SHARED])
    columns = [
        c["73KID"] - 1, c["SUBJECT"], c["SESSION"], c["RUN"], c["TRIAL"], np.arange(n), np.floor(c["TIME"]),
        c["ISOLD"], minus1(c["ISCORRECT"]), rt, minus1(c["CHANGEMIND"]), c["ISOLDCURRENT"],
        minus1(c["ISCORRECTCURRENT"]), c["TOTAL1"], c["TOTAL2"], minus1(c["BUTTON"]), shared,
    ]  # fmt: skip
    return np.column_stack(columns).astype(np.float64)


def write_fake_mindeye2(root: Path, tree: FakeNsd, subject: str, seed: int = 0, image_size: int = 8) -> FakeMindEye2:
    rng = np.random.default_rng(seed)
    src = root / "mindeye2"
    behav = behav_rows(tree, subject)
    n = behav.shape[0]
    wds = src / "wds" / subject
    shared = behav[:, 16] == 1
    for session in range(1, n // 750 + 1):
        rows = np.flatnonzero((behav[:, 2] == session) & ~shared)
        samples = {f"sample{g:09d}": {"behav": behav[g][None], "past_behav": rng.random((15, 17))} for g in rows}
        write_shard(wds / "train" / f"{session - 1}.tar", samples)
    write_shard(wds / "new_test/0.tar", {f"sample{g:09d}": {"behav": behav[g][None]} for g in np.flatnonzero(shared)})

    brain = rng.random(VOLUME) < 0.8
    mask = brain & (rng.random(VOLUME) < 0.4)
    roi_dir = tree.nsd_dir / f"nsddata/ppdata/{subject}/func1pt8mm/roi"
    roi_dir.mkdir(parents=True, exist_ok=True)
    nsdgeneral = np.where(mask, 1, np.where(brain, 0, -1)).astype(np.int16)
    nibabel.save(nibabel.Nifti1Image(nsdgeneral, np.eye(4)), roi_dir / "nsdgeneral.nii.gz")
    streams = np.where(brain, rng.integers(0, 8, VOLUME), -1).astype(np.int16)
    nibabel.save(nibabel.Nifti1Image(streams, np.eye(4)), roi_dir / "streams.nii.gz")

    betas = (rng.standard_normal((n, int(mask.sum()))) * 2 + rng.standard_normal(int(mask.sum()))).astype(np.float32)
    betas[rng.random(betas.shape) < 0.001] = np.nan
    src.mkdir(parents=True, exist_ok=True)
    with h5py.File(src / f"betas_all_{subject}_fp32_renorm.hdf5", "w") as f:
        f.create_dataset("betas", data=betas)
    ids = np.unique(behav[:, 0]).astype(np.int64)
    images = rng.random((ids.size, 3, image_size, image_size)).astype(np.float16)
    with h5py.File(src / "coco_images_224_float16.hdf5", "w") as f:
        shape = (73_000, 3, image_size, image_size)
        f.create_dataset("images", shape=shape, dtype=np.float16, chunks=(1, *shape[1:]))[ids] = images
    return FakeMindEye2(src, behav, betas, mask, streams, ids, images)
