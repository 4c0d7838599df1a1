"""Data for bench/mem_dataloader.py: a generated subject in the HDF5 layout (jobs/data/FORMAT.md)
and the same data written the way the reference stored it (mem-spec 1.3, 1.6), plus a loader
that reads a sample the reference way.

Reference layout under ``REF``::

    REF/fmri/{g:06d}.npy        float16 [n_voxels]   betas of trial g (one file per trial)
    REF/feats/{id:05d}.npy      float16 [F]          cached memory feature of image id
    REF/images/{id:05d}.jpeg    RGB JPEG quality 95  (or .npy uint8 [3, H, W] with --ref-images npy)
    REF/behavior_data.npy       float32 [n_trials + 1, 35]   loaded once, as the reference did
    REF/image_with_memory.npy   int32 [n_trials, 33]         loaded once
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from jobs.data.layout import BLANK, N_SLOTS, TRIALS_PER_SESSION, open_images, open_subject, subject_path
from jobs.data.memory import prev_behavior_rows

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
SUBJECT = "subj01"
STAMP = "bench_params.json"


def generate_hdf5(out: Path, trials: int, voxels: int, image_size: int, feature_dim: int) -> dict[str, Any]:
    """One synthetic subject with ``trials`` trials (whole sessions, the last 3 held out as in
    NSD) in ``out``; reused when a previous run wrote the same parameters."""
    from jobs.data.synth import synthesize

    n_sessions = max(4, math.ceil(trials / TRIALS_PER_SESSION))
    params = {"n_sessions": n_sessions, "n_voxels": voxels, "image_size": image_size, "feature_dim": feature_dim}
    stamp = out / STAMP
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        return params
    t0 = time.perf_counter()
    synthesize(out, n_subjects=1, n_predict_sessions=3, progress=True, **params)
    params_done = dict(params, seconds=round(time.perf_counter() - t0, 1))
    stamp.write_text(json.dumps(params))
    print(f"generated HDF5 layout in {params_done['seconds']} s: {params}", flush=True)
    return params


def write_reference(h5_dir: Path, ref: Path, image_format: str) -> None:
    """Write the one-file-per-item reference layout from the HDF5 subject (idempotent)."""
    done = ref / f".done-{image_format}"
    if done.exists():
        return
    t0 = time.perf_counter()
    for sub in ("fmri", "feats", "images"):
        (ref / sub).mkdir(parents=True, exist_ok=True)
    with open_subject(subject_path(h5_dir, SUBJECT)) as subject:
        np.save(ref / "behavior_data.npy", subject.behavior())
        np.save(ref / "image_with_memory.npy", subject.memory_index())
        betas = subject.betas
        block = 256
        for start in range(0, betas.shape[0], block):
            rows = betas[start : start + block]
            for k, row in enumerate(rows):
                np.save(ref / "fmri" / f"{start + k:06d}.npy", row)
    with open_images(h5_dir / "images.h5") as images:
        block = 256
        for start in range(0, len(images.ids), block):
            ids = images.ids[start : start + block]
            pixels = images.images[start : start + block]
            feats = images.features[start : start + block]
            for image_id, px, feat in zip(ids, pixels, feats, strict=True):
                np.save(ref / "feats" / f"{image_id:05d}.npy", feat)
                if image_format == "jpeg":
                    buf = io.BytesIO()
                    Image.fromarray(px.transpose(1, 2, 0)).save(buf, format="JPEG", quality=95)
                    (ref / "images" / f"{image_id:05d}.jpeg").write_bytes(buf.getvalue())
                else:
                    np.save(ref / "images" / f"{image_id:05d}.npy", px)
    done.write_text("")
    print(f"wrote reference layout ({image_format} images) in {time.perf_counter() - t0:.1f} s", flush=True)


class ReferenceDataset(Dataset[dict[str, Any]]):
    """A sample read the reference way: one betas file, two image files, one feature file per
    non-blank memory frame T=-2..-32; behaviour and the memory table from arrays loaded once.

    Same keys, shapes and dtypes as jobs.mem.data.MemDataset. ``opens`` counts files opened in
    this process (per worker when workers are used).
    """

    def __init__(
        self,
        ref: Path,
        indices: np.ndarray,
        image_format: str,
        image_size: int,
        feature_dim: int,
        n_prev: int = N_SLOTS - 1,
    ) -> None:
        self.ref, self.indices, self.image_format, self.n_prev = ref, indices, image_format, n_prev
        self.image_size, self.feature_dim = image_size, feature_dim
        self.behavior = np.load(ref / "behavior_data.npy")
        self.memory = np.load(ref / "image_with_memory.npy")
        self.prev_bhv_rows = prev_behavior_rows(self.memory)
        self.opens = 0

    def __len__(self) -> int:
        return len(self.indices)

    def _npy(self, path: Path) -> np.ndarray:
        self.opens += 1
        return np.load(path)

    def _image(self, image_id: int) -> torch.Tensor:
        if image_id == BLANK:
            return torch.full((3, self.image_size, self.image_size), 0.1)
        if self.image_format == "jpeg":
            self.opens += 1
            with Image.open(self.ref / "images" / f"{image_id:05d}.jpeg") as img:
                px = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
        else:
            px = self._npy(self.ref / "images" / f"{image_id:05d}.npy")
        x = torch.from_numpy(np.ascontiguousarray(px)).float().div_(255)
        return (x - IMAGENET_MEAN) / IMAGENET_STD

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = int(self.indices[i])
        window = self.memory[g]
        feats = torch.zeros(self.n_prev - 1, self.feature_dim)
        for t, image_id in enumerate(window[N_SLOTS - 3 :: -1][: self.n_prev - 1]):  # T=-2, -3, ...
            if image_id != BLANK:
                feats[t] = torch.from_numpy(self._npy(self.ref / "feats" / f"{image_id:05d}.npy")).float()
        return {
            "img": self._image(int(window[N_SLOTS - 1])),
            "prev_img": self._image(int(window[N_SLOTS - 2])),
            "prev_feats": feats,
            "bhv": torch.from_numpy(self.behavior[g].copy()),
            "prev_bhvs": torch.from_numpy(self.behavior[self.prev_bhv_rows[g, : self.n_prev]]),
            "subject": SUBJECT,
            "index": g,
            "y": torch.from_numpy(self._npy(self.ref / "fmri" / f"{g:06d}.npy").astype(np.float32)),
        }
