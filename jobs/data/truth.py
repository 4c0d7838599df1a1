"""Test truth for scoring Algonauts 2023 submissions: the measured test responses, what their noise
ceiling needs, and optional stream labels for per-ROI scores.

Plain ``.npy`` files (no pickles), so any NumPy reader works, modelled on the Algonauts release;
``jobs/data/truth.py`` is the reference writer and reader, ``memq score`` and ``memq report`` read it.

Directory
---------

    DIR/subj01/ ... DIR/subjXX/   one directory per subject (name = subject id, as in the submission)
    DIR/synthetic.json            only in a synthetic truth: who made it and how, e.g.
                                  {"generator": "memq data synth", "seed": 0, "noise": 1.0}; its ncsnr
                                  is exact, not estimated. A truth without it is taken as measured.

subjXX/
-------

Columns are the subject's Algonauts challenge vertices of one hemisphere, in the order of the
submission's columns (real data: ascending fsaverage vertex, as in the challenge masks). Rows are
the subject's test images in the order of the submission's rows (``challenge_set`` order; the
prepared subject file's ``challenge_images``).

    lh_test_fmri.npy   float [n_test, n_lh]  measured response to each test image: the session-z-scored
    rh_test_fmri.npy   float [n_test, n_rh]  betas averaged over the image's repeats (finite)
    lh_ncsnr.npy       float [n_lh]          noise-ceiling SNR of each vertex (NSD's ``ncsnr``; finite, >= 0)
    rh_ncsnr.npy       float [n_rh]
    test_repeats.npy   int [n_test]          trials averaged into each test response (>= 1; 1 to 3 in NSD)
    lh_streams.npy     int [n_lh], optional  stream label of each vertex (both files or neither):
    rh_streams.npy     int [n_rh], optional  0 RSC (outside every stream), 1 E, 2 MV, 3 ML, 4 MP, 5 V, 6 L,
                                             7 P (Algonauts' ``streams_challenge_space`` labels with the
                                             names of mem-spec 1.8)

Score (mem-spec 4.5; ``jobs/eval/score.py``)
--------------------------------------------

With A, B and C the numbers of test images with 3, 2 and 1 repeats, the noise ceiling of vertex v
is ``NC_v = ncsnr_v^2 / (ncsnr_v^2 + (A/3 + B/2 + C/1) / (A + B + C))`` (the repeat term is the
mean of 1 / test_repeats, which also covers other repeat counts); NC = 0 becomes 1e-14. With r_v
the Pearson r over test images between prediction and ``*_test_fmri``, clipped at 0, the score is
``min(r_v^2 / NC_v, 1) * 100``. A vertex whose prediction or response is constant has r_v = 0.

Sources
-------

Real data: the held-out NSD sessions' betas of the challenge vertices, z-scored per session and
averaged per test image; ncsnr from NSD's ``lh/rh.ncsnr.mgh`` at the challenge vertices (mem-spec
1.6); labels from the Algonauts ``roi_masks/lh/rh.streams_challenge_space.npy``. Synthetic data:
``memq data synth`` writes ``DIR/truth/`` for its predict sessions, ``synthetic.json`` included
(``jobs/data/synth_truth.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jobs.data.inputs import integer_valued, load_npy
from jobs.data.layout import STREAM_ROIS
from memq.job import UserError

HEMIS = ("lh", "rh")
STREAM_NAMES = STREAM_ROIS[:-1]  # label k names stream k; R (the added voxels) is not a challenge vertex
REPEATS_FILE = "test_repeats.npy"
SYNTHETIC_FILE = "synthetic.json"
HINT = "see jobs/data/TRUTH.md"
_MAX_REPEATS = 1_000_000


@dataclass(frozen=True)
class HemiTruth:
    fmri: np.ndarray  # [n_test, n_vertices]
    ncsnr: np.ndarray  # [n_vertices]
    streams: np.ndarray | None = None  # [n_vertices] labels 0..7


@dataclass(frozen=True)
class SubjectTruth:
    hemis: dict[str, HemiTruth]  # "lh", "rh"
    repeats: np.ndarray  # [n_test]


def _files(hemi: str) -> dict[str, str]:
    return {"fmri": f"{hemi}_test_fmri.npy", "ncsnr": f"{hemi}_ncsnr.npy", "streams": f"{hemi}_streams.npy"}


def _finite(path: Path, what: str, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``values`` as float64, or raise unless they are finite numbers of ``shape``."""
    if values.shape != shape:
        raise UserError(f"{what} is {list(values.shape)}, expected {list(shape)}", where=str(path), hint=HINT)
    if values.dtype.kind not in "iuf" or not np.all(np.isfinite(values)):
        raise UserError(f"{what} must hold finite numbers", where=str(path), hint=HINT)
    return values.astype(np.float64)


def _hemi(directory: Path, hemi: str, n_test: int) -> HemiTruth:
    files = {key: directory / name for key, name in _files(hemi).items()}
    raw = load_npy(files["fmri"], f"test responses float [n_test, n_{hemi}] ({HINT})")
    if raw.ndim != 2:
        raise UserError(f"test responses must be [n_test, n_{hemi}], got {list(raw.shape)}", where=str(files["fmri"]))
    fmri = _finite(files["fmri"], "test responses", raw, (n_test, raw.shape[1]))
    n = fmri.shape[1]
    ncsnr = _finite(files["ncsnr"], "ncsnr", load_npy(files["ncsnr"], f"ncsnr float [n_{hemi}] ({HINT})"), (n,))
    if np.any(ncsnr < 0):
        raise UserError("ncsnr must be >= 0", where=str(files["ncsnr"]), hint=HINT)
    streams = None
    if files["streams"].exists():
        labels = load_npy(files["streams"], f"stream labels int [n_{hemi}]")
        if labels.shape != (n,):
            raise UserError(f"stream labels are {list(labels.shape)}, expected [{n}]", where=str(files["streams"]))
        streams = integer_valued(files["streams"], "stream labels", labels, 0, len(STREAM_NAMES) - 1)
    return HemiTruth(fmri, ncsnr, streams)


def read_truth(truth_dir: Path, subject: str) -> SubjectTruth:
    """The validated truth of one subject; every problem is a UserError naming the file."""
    directory = truth_dir / subject
    path = directory / REPEATS_FILE
    repeats = load_npy(path, f"test repeats int [n_test] ({HINT})")
    if repeats.ndim != 1:
        raise UserError(f"test repeats must be 1-d [n_test], got {list(repeats.shape)}", where=str(path), hint=HINT)
    repeats = integer_valued(path, "test repeats", repeats, 1, _MAX_REPEATS)
    hemis = {hemi: _hemi(directory, hemi, repeats.size) for hemi in HEMIS}
    if (hemis["lh"].streams is None) != (hemis["rh"].streams is None):
        raise UserError("stream labels are given for one hemisphere only", where=str(directory), hint=HINT)
    return SubjectTruth(hemis, repeats)


def write_truth(truth_dir: Path, subject: str, truth: SubjectTruth) -> Path:
    """Write ``truth_dir/subject/`` (float32 responses and ncsnr, int64 repeats and labels)."""
    directory = truth_dir / subject
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / REPEATS_FILE, truth.repeats.astype(np.int64))
    for hemi, part in truth.hemis.items():
        files = _files(hemi)
        np.save(directory / files["fmri"], part.fmri.astype(np.float32))
        np.save(directory / files["ncsnr"], part.ncsnr.astype(np.float32))
        if part.streams is not None:
            np.save(directory / files["streams"], part.streams.astype(np.int64))
    return directory


def synthetic_mark(truth_dir: Path) -> dict[str, Any] | None:
    """What ``DIR/synthetic.json`` says of a synthetic truth; None where there is none (measured data)."""
    path = truth_dir / SYNTHETIC_FILE
    if not path.exists():
        return None
    try:
        mark = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"not a readable JSON file ({exc})", where=str(path), hint=HINT) from exc
    if not isinstance(mark, dict):
        raise UserError("expected a JSON object", where=str(path), hint=HINT)
    return mark
