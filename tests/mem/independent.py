"""Scores computed by the tests themselves, apart from the code under test (jobs/mem/evaluate.py,
jobs/mem/pearson.py, the soup recipes): a state dict's per-voxel Pearson r on a whole split, from
the model's forward pass, targets read from the subject files with h5py, and r in NumPy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from jobs.mem.build import Built


def r_per_voxel(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Column-wise Pearson r in float64; 0 where a column is constant."""
    x = pred.astype(np.float64) - pred.mean(0)
    y = target.astype(np.float64) - target.mean(0)
    denominator = np.sqrt((x * x).sum(0) * (y * y).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (x * y).sum(0) / denominator, 0.0)


def mean_of(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of state dicts, in float64 then float32."""
    return {k: torch.stack([s[k].double() for s in states]).mean(0).float() for k in states[0]}


def read_targets(data_dir: str | Path, subject: str, split: str,
                 rois: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """(trials, betas float64 [n_trials, n_modelled_voxels]) of ``split``, straight from the file:
    the modelled voxels are the ROIs' positions in the order listed, each once (all voxels if None)."""
    with h5py.File(Path(data_dir) / f"{subject}.h5", "r") as f:
        trials = f[f"splits/{split}"][:]
        betas = f["betas"][:].astype(np.float64)[trials]
        if rois is None:
            return trials, betas
        voxels = list(dict.fromkeys(int(v) for roi in rois for v in f[f"rois/{roi}"][:]))
    return trials, betas[:, voxels]


def predictions(built: Built, state: Mapping[str, torch.Tensor],
                split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per subject: (trials, float64 predictions [n_trials, n_voxels]) of ``state`` loaded into
    ``built``'s model, one sample after another through its forward pass (eval mode, float32)."""
    built.model.load_trainable_state_dict({k: v.clone() for k, v in state.items()})
    out = {}
    with torch.inference_mode():
        for dataset in built.data.datasets(split):
            trials, rows = [], []
            for start in range(0, len(dataset), 64):
                samples = [dataset[i] for i in range(start, min(start + 64, len(dataset)))]
                batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]
                         if k not in ("subject", "index", "y")}
                rows.append(built.model(batch, dataset.subject).double().numpy())
                trials += [s["index"] for s in samples]
            out[dataset.subject] = (np.array(trials), np.concatenate(rows))
    return out


def split_r(built: Built, params: Mapping[str, Any], state: Mapping[str, torch.Tensor],
            split: str) -> dict[str, np.ndarray]:
    """Per subject, the per-voxel r of ``state`` on the whole ``split`` against the file's betas."""
    r = {}
    for subject, (trials, pred) in predictions(built, state, split).items():
        file_trials, target = read_targets(params["DATASET.DIR"], subject, split, params.get("DATASET.ROIS"))
        assert np.array_equal(trials, file_trials), f"{subject} {split}: the model saw other trials than the file's"
        r[subject] = r_per_voxel(pred, target)
    return r


def mean_r(r: Mapping[str, np.ndarray]) -> float:
    """The mean over every modelled voxel of every subject (voxel-weighted)."""
    return float(np.concatenate(list(r.values())).mean())
