"""Prepared-data layout for the Mem model: one HDF5 file per subject and one shared image store.

Formats ``memq.subject`` and ``memq.images``, version 1. Any HDF5 reader (h5py, MATLAB, Julia,
...) can read them; ``jobs/data/layout.py`` is the reference writer and reader.

Directory
---------

    DIR/subj01.h5 ... DIR/subjXX.h5   one file per subject (name = subject id), space fsaverage
    DIR/subjXX.SPACE.h5               the same subject in another prepared space (SPACE below)
    DIR/images.h5                     images and cached memory features, for all subjects

SPACE names the voxels and the betas version as the reference names them: ``fsaverage`` (b3
betas, the default: ``subjXX.h5``), ``func1mm_hip``, ``fship``, and ``_b2`` appended for the b2
betas (``betas_fithrf``): ``subj01.fship_b2.h5``, ``subj01.fsaverage_b2.h5``. Training selects one
with ``DATASET.FMRI_SPACE``. All of a subject's files share ``behavior``, ``memory_index``, the
splits and ``challenge_images``; voxels, coordinates, ROIs and betas differ:

    fsaverage    challenge vertices, then the vertices above the noise-ceiling threshold (mem-spec 1.6)
    func1mm_hip  the func1mm voxels that NSD's ``func1mm/roi/thalamus.nii.gz`` or ``MTL.nii.gz``
                 label > 0, in C order of the volume; coords = (i, j, k); voxel_indices = flat
                 C-order index; ROIs LGN, SC, Vpu, DLpu, DMpu (thalamus 1..5), ErC, area35, area36,
                 PhC, Sub, CA1, CA2, CA3, DG, HT (MTL 1..10) and HHHB (Sub..DG), H (HHHB + HT), PrC
                 (area35 + area36), pulvinar (Vpu + DLpu + DMpu). Attribute volume_shape.
    fship        every fsaverage vertex (lh then rh; n_surface of them, attribute n_surface), then
                 the func1mm_hip voxels. coords: the side-by-side spheres, then the (i, j, k) moved
                 along x to start at int(max sphere x) + 1; voxel_indices: the vertex, then n_surface
                 + the flat volume index; ROIs nsdgeneral (fsaverage ``label/?h.nsdgeneral.mgz`` == 1),
                 the 22 HCP-MMP1 cortices (Primary_Visual ... Dorsolateral_Prefrontal) and their 5
                 groups (Visual, Somatomotor, Auditory, Posterior, Anterior) from ``?h.HCP_MMP1.mgz``
                 (jobs/data/hcp.py), and the func1mm_hip ROIs shifted by n_surface. Vertices without
                 data are 0 in every trial.

Files are published atomically: a writer writes ``DIR/.NAME.<pid>.<token>.tmp``, flushes, fsyncs
and renames it to ``NAME``. A file under its final name is always complete; ``.tmp`` leftovers of
killed writers may be deleted.

Conventions
-----------

- Global trial index ``g = (session - 1) * 750 + k``; sessions are 1-based, ``k = 0..749`` counts
  stimulus trials within the session. ``n_trials = 750 * n_sessions`` covers every completed
  session, including the held-out ("predict") sessions.
- Image ids are 0-based NSD "73k" ids. ``-1`` marks a blank (fixation-only) trial slot.
- Voxel positions are 0-based positions in the subject's full voxel list ``0 .. n_voxels - 1``.
- Index datasets are int64 and sorted ascending unless stated otherwise.

subjXX.h5
---------

Root attributes:

    format          "memq.subject"
    format_version  1
    subject         str, e.g. "subj01"
    space           str, e.g. "fsaverage", "func1mm_hip", "fship", "func1pt8mm", "synthetic"
    beta            str, optional: NSD betas version, "b3" (betas_fithrf_GLMdenoise_RR) or "b2" (betas_fithrf)
    n_sessions      int, completed sessions
    n_trials        int, = 750 * n_sessions
    n_voxels        int
    n_challenge     int, optional: the first n_challenge voxels are the Algonauts challenge
    n_lh, n_rh      int, optional: challenge voxels per hemisphere, lh first (n_lh + n_rh = n_challenge)
    (others)        optional extra attributes. The synthetic generator (``memq data synth``, space
                    "synthetic") writes synth_seed, synth_noise and synth_r_ceiling_mean: the mean
                    over the subject's voxels of the best achievable Pearson r against its betas
                    (the planted signal's; ``jobs/data/synth.py``). Measured data has none of them.

Datasets:

    betas          float16 [n_beta_trials, n_voxels], chunks (1, n_voxels)
                   z-scored betas (per voxel over each session's 750 trials); row g = trial g.
                   Only training sessions have betas: n_beta_trials = 750 * n_train_sessions,
                   the first sessions; predict sessions have no rows.
    behavior       float32 [n_trials + 1, 35]
                   behaviour features of trial g in row g (all sessions); the LAST row is the
                   fill row used for blank memory slots (mem-spec 1.4):
                   [0,0,-1,-1,-1,-1,-1,-1,-1,-1,-1,0,0,0,0,0,0,0,0,0,0] followed twice by its
                   columns p = [0,1,2,11,12,15,16] (= [0,0,-1,0,0,0,0]).
    memory_index   int32 [n_trials, 33]
                   73k image id of the time-locked trial slots T = -32..0 of trial g (entry 32 is
                   T=0, the trial's own image; entry 31 is T=-1; entry 0 is T=-32). -1 = blank
                   slot or before the start of the run; a window never crosses runs.
    splits/train, splits/val1, splits/val2
                   int64 trial indices (< n_beta_trials); image-disjoint 94/4/2 split of the
                   training sessions' images; every trial of an image is in its image's split.
    splits/predict int64 trial indices of the held-out sessions (no betas).
    coords         float32 [n_voxels, 3]  voxel coordinates (fsaverage: the side-by-side spheres).
    voxel_indices  int64 [n_voxels]  source index of each voxel (fsaverage vertex for fsaverage
                   data, flat mask index for volume data). Not sorted in general.
    rois/<name>    int64 [n]  voxel positions of an ROI, in the ROI's own order (not necessarily
                   sorted; the random ROIs keep their shuffled order). Names in use:
                   RSC, E, MV, ML, MP, V, L, P, R (anatomical streams + added high-NC voxels),
                   w_1..w_9 (model-defined clusters), r_1_1..r_10_9 (random ROIs, atlas j, ROI i).
                   An ROI may be empty (shape (0,)).
    challenge_images  int64 [n_test], optional: 73k ids of the challenge test images, in
                   submission order.

images.h5
---------

Root attributes:

    format          "memq.images"
    format_version  1
    image_size      int, H = W
    feature_dim     int, F
    features_source str, optional: what computed ``features`` (e.g. the timm model, its input size,
                    the installed weights' name and sha256). ``"pending"``: not computed yet (zeros);
                    run ``memq data cache-features`` before training.

Datasets:

    ids        int64 [n_images]  sorted unique 73k ids; row i of the two datasets below is ids[i].
    images     uint8 [n_images, 3, H, W], chunks (1, 3, H, W)  RGB (224 x 224 for real data).
    features   float16 [n_images, F], chunks (1, F)  cached memory features of each image
               (real data: DINOv2 ViT-L/14 final-LayerNorm CLS token, F = 1024).

Every non-blank id in any subject's ``memory_index`` must be present in ``ids``.

dark/ (teacher predictions, optional)
-------------------------------------

    DIR/dark/<name>/<split>/   one model's predictions of one split (jobs/data/dark.py), for
                               distillation (Mem LOSS.DARK with DATASET.DARK = <name>; the
                               reference kept them as subjXX/dark/<space>/<g>.<name>.npy)
        subjXX.npy       float16 [n_trials, n_model_voxels], C order: row i = trial trials[i],
                         column j = voxel position voxels[j]
        index.npz        subjXX.trials, subjXX.voxels (int64)
        manifest.json    written last: source (grid, job, recipe, soup sha256), split, and the size
                         and sha256 of every file; readers verify them before trusting a byte

The format is the one of a ``mem.predict`` output directory, which ``mem.predict`` with param
``dark: <name>`` copies here. A directory without ``manifest.json`` is incomplete.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from jobs.data.atomic import AtomicH5, CommitOnExit
from memq.job import UserError

SUBJECT_FORMAT = "memq.subject"
IMAGES_FORMAT = "memq.images"
FORMAT_VERSION = 1
IMAGES_FILE = "images.h5"
FEATURE_READ_BLOCK = 4096  # rows per read when gathering many features
FEATURES_SOURCE = "features_source"  # images.h5 attribute: what computed the features
FEATURES_PENDING = "pending"

TRIALS_PER_SESSION = 750
RUNS_PER_SESSION = 12
SLOTS_PER_RUN = 75
N_SLOTS = 33  # memory window: trial slots T = -32..0
N_PREV = N_SLOTS - 1
BLANK = -1
BEHAVIOR_DIM = 35
REPEAT_COLUMNS = (0, 1, 2, 11, 12, 15, 16)  # base columns repeated for the previous/next showing
_FILL_BASE = np.array([0, 0, *[-1] * 9, *[0] * 10], dtype=np.float32)
FILL_ROW = np.concatenate([_FILL_BASE, _FILL_BASE[list(REPEAT_COLUMNS)], _FILL_BASE[list(REPEAT_COLUMNS)]])
FILL_ROW.flags.writeable = False
BASE_BEHAVIOR_DIM = len(_FILL_BASE)
SPLITS = ("train", "val1", "val2", "predict")
DEFAULT_SPACE = "fsaverage"  # its files are subjXX.h5; other spaces' subjXX.SPACE.h5
_SUBJECT_FILE = re.compile(r"(subj[^.]+)(?:\.([^.]+))?\.h5")
STREAM_ROIS = ("RSC", "E", "MV", "ML", "MP", "V", "L", "P", "R")

PathArg = str | os.PathLike[str]


class LayoutError(UserError):
    """A prepared-data file is missing, of another format or version, or malformed."""

    def __init__(self, path: PathArg, what: str) -> None:
        super().__init__(what, where=str(path), hint="see jobs/data/FORMAT.md")

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass(frozen=True)
class ChallengeLayout:
    """Where the Algonauts challenge voxels sit: the first n_challenge, lh (n_lh) then rh (n_rh)."""

    n_challenge: int
    n_lh: int
    n_rh: int


@dataclass
class SubjectMeta:
    """Everything of a subject file except the betas, which are streamed by :class:`SubjectWriter`."""

    subject: str
    space: str
    behavior: np.ndarray
    memory_index: np.ndarray
    splits: Mapping[str, np.ndarray]
    coords: np.ndarray
    voxel_indices: np.ndarray
    rois: Mapping[str, np.ndarray]
    n_beta_trials: int
    challenge: ChallengeLayout | None = None
    challenge_images: np.ndarray | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)


Spec = dict[str, tuple[tuple[int, ...], np.dtype]]


def _subject_spec(n_sessions: int, n_voxels: int, n_beta_trials: int) -> Spec:
    n_trials = TRIALS_PER_SESSION * n_sessions
    return {
        "betas": ((n_beta_trials, n_voxels), np.dtype(np.float16)),
        "behavior": ((n_trials + 1, BEHAVIOR_DIM), np.dtype(np.float32)),
        "memory_index": ((n_trials, N_SLOTS), np.dtype(np.int32)),
        "coords": ((n_voxels, 3), np.dtype(np.float32)),
        "voxel_indices": ((n_voxels,), np.dtype(np.int64)),
    }


def _images_spec(n_images: int, image_size: int, feature_dim: int) -> Spec:
    return {
        "ids": ((n_images,), np.dtype(np.int64)),
        "images": ((n_images, 3, image_size, image_size), np.dtype(np.uint8)),
        "features": ((n_images, feature_dim), np.dtype(np.float16)),
    }


def _check_spec(path: PathArg, actual: Mapping[str, Any], spec: Spec) -> None:
    """Raise if a dataset (h5py dataset or array) in ``actual`` lacks the shape or dtype of ``spec``."""
    for name, (shape, dtype) in spec.items():
        if name not in actual:
            raise LayoutError(path, f"missing dataset {name!r} (expected {dtype} {list(shape)})")
        got = actual[name]
        if tuple(got.shape) != shape or got.dtype != dtype:
            raise LayoutError(
                path, f"dataset {name!r} is {got.dtype} {list(got.shape)}, expected {dtype} {list(shape)}"
            )


def _check_indices(path: PathArg, what: str, idx: np.ndarray, size: int, *, ordered: bool) -> None:
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise LayoutError(path, f"{what} must be a 1-d integer array, got {idx.dtype} {list(idx.shape)}")
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        raise LayoutError(path, f"{what} holds indices outside [0, {size})")
    if ordered and np.any(np.diff(idx) <= 0):
        raise LayoutError(path, f"{what} must be sorted ascending without repeats")
    if not ordered and np.unique(idx).size != idx.size:
        raise LayoutError(path, f"{what} holds repeated indices")


def _split_size(name: str, n_trials: int, n_beta_trials: int) -> int:
    """Train/val splits must have betas; the predict split may reach every trial."""
    return n_trials if name == "predict" else n_beta_trials


def _check_format(path: PathArg, attrs: Mapping[str, Any], expected: str) -> None:
    fmt = attrs.get("format")
    if fmt != expected:
        raise LayoutError(path, f"format attribute is {fmt!r}, expected {expected!r}")
    version = attrs.get("format_version")
    version = version.item() if isinstance(version, np.generic) else version
    if version != FORMAT_VERSION:
        raise LayoutError(path, f"format version {version!r}; this reader understands {FORMAT_VERSION}")


# ---------------------------------------------------------------------------------------------
# writers


class _RowWriter(CommitOnExit):
    """An atomic HDF5 file whose main dataset is appended in row blocks and must end up full."""

    def __init__(self, path: PathArg, what: str) -> None:
        self.path = Path(path)
        self._what = what
        self._out = AtomicH5(self.path)
        self._next = 0
        self._n_rows = 0

    def _claim(self, n: int, fits: bool, block: str) -> slice:
        """Reserve the next ``n`` rows, or raise naming ``block`` if it does not fit."""
        end = self._next + n
        if not fits or end > self._n_rows:
            raise LayoutError(self.path, f"{block} does not fit at row {self._next} of {self._n_rows} {self._what}")
        rows = slice(self._next, end)
        self._next = end
        return rows

    def commit(self) -> Path:
        if self._next != self._n_rows:
            self._out.abort()
            raise LayoutError(self.path, f"only {self._next} of {self._n_rows} {self._what} written")
        return self._out.commit()

    def abort(self) -> None:
        self._out.abort()


def _check_subject_meta(path: Path, meta: SubjectMeta) -> tuple[dict[str, np.ndarray], Spec]:
    """Validate ``meta``; return its arrays converted to the stored dtypes and the file's spec."""
    n_trials, n_voxels = meta.memory_index.shape[0], meta.coords.shape[0]
    if n_trials % TRIALS_PER_SESSION or meta.n_beta_trials % TRIALS_PER_SESSION:
        raise LayoutError(path, f"trial counts must be multiples of {TRIALS_PER_SESSION}")
    if not 0 < meta.n_beta_trials <= n_trials or n_voxels == 0:
        raise LayoutError(path, "need 0 < n_beta_trials <= n_trials and n_voxels > 0")
    spec = _subject_spec(n_trials // TRIALS_PER_SESSION, n_voxels, meta.n_beta_trials)
    small = {name: entry for name, entry in spec.items() if name != "betas"}
    arrays = {name: np.asarray(getattr(meta, name)).astype(dtype, copy=False) for name, (_, dtype) in small.items()}
    _check_spec(path, arrays, small)
    if not np.allclose(arrays["behavior"][-1], FILL_ROW):
        raise LayoutError(path, "the last behavior row must be the fill row (layout.FILL_ROW)")
    for name in SPLITS:
        arrays[f"splits/{name}"] = np.asarray(meta.splits[name], dtype=np.int64)
        size = _split_size(name, n_trials, meta.n_beta_trials)
        _check_indices(path, f"split {name!r}", arrays[f"splits/{name}"], size, ordered=True)
    for name, positions in meta.rois.items():
        arrays[f"rois/{name}"] = np.asarray(positions, dtype=np.int64)
        _check_indices(path, f"ROI {name!r}", arrays[f"rois/{name}"], n_voxels, ordered=False)
    if meta.challenge_images is not None:
        arrays["challenge_images"] = np.asarray(meta.challenge_images, dtype=np.int64)
    c = meta.challenge
    if c is not None and (c.n_lh + c.n_rh != c.n_challenge or not 0 <= c.n_challenge <= n_voxels):
        raise LayoutError(path, f"inconsistent challenge layout {c}")
    return arrays, spec


class SubjectWriter(_RowWriter):
    """Writes ``subjXX.h5``: the small arrays at once, then the betas appended in row blocks.

    Nothing appears under ``path`` until :meth:`commit` (or a clean ``with`` exit) has checked that
    every betas row was written; an exception discards the file.
    """

    def __init__(self, path: PathArg, meta: SubjectMeta) -> None:
        arrays, spec = _check_subject_meta(Path(path), meta)
        super().__init__(path, "betas rows")
        try:
            f = self._out.file
            n_trials, n_voxels = meta.memory_index.shape[0], meta.coords.shape[0]
            f.attrs.update(dict(meta.attrs))
            f.attrs.update(
                format=SUBJECT_FORMAT,
                format_version=FORMAT_VERSION,
                subject=meta.subject,
                space=meta.space,
                n_sessions=n_trials // TRIALS_PER_SESSION,
                n_trials=n_trials,
                n_voxels=n_voxels,
            )
            if meta.challenge is not None:
                c = meta.challenge
                f.attrs.update(n_challenge=c.n_challenge, n_lh=c.n_lh, n_rh=c.n_rh)
            for name, data in arrays.items():
                f.create_dataset(name, data=data)
            f.require_group("rois")
            self._betas = f.create_dataset("betas", shape=spec["betas"][0], dtype=np.float16, chunks=(1, n_voxels))
        except BaseException:
            self.abort()
            raise
        self._n_rows = meta.n_beta_trials

    def append_betas(self, rows: np.ndarray) -> None:
        """Write the next ``len(rows)`` betas rows (trials in order)."""
        rows = np.asarray(rows)
        fits = rows.ndim == 2 and rows.shape[1] == self._betas.shape[1]
        self._betas[self._claim(rows.shape[0], fits, f"betas block {list(rows.shape)}")] = rows.astype(np.float16)


def write_subject(path: PathArg, meta: SubjectMeta, betas: np.ndarray) -> Path:
    """Write a whole subject file from in-memory arrays."""
    with SubjectWriter(path, meta) as writer:
        writer.append_betas(betas)
    return Path(path)


class ImageWriter(_RowWriter):
    """Writes ``images.h5``; images and features are appended in blocks, in ``ids`` order."""

    def __init__(
        self,
        path: PathArg,
        ids: np.ndarray,
        image_size: int,
        feature_dim: int,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0 or (ids.min() < 0) or np.any(np.diff(ids) <= 0):
            raise LayoutError(path, "ids must be a non-empty, sorted, unique, non-negative 1-d array")
        spec = _images_spec(ids.size, image_size, feature_dim)
        super().__init__(path, "images")
        try:
            f = self._out.file
            f.attrs.update(dict(attrs or {}))
            f.attrs.update(
                format=IMAGES_FORMAT, format_version=FORMAT_VERSION, image_size=image_size, feature_dim=feature_dim
            )
            f.create_dataset("ids", data=ids)
            chunks = (1, 3, image_size, image_size)
            self._images = f.create_dataset("images", shape=spec["images"][0], dtype=np.uint8, chunks=chunks)
            self._features = f.create_dataset(
                "features", shape=spec["features"][0], dtype=np.float16, chunks=(1, feature_dim)
            )
        except BaseException:
            self.abort()
            raise
        self._n_rows = ids.size

    def append(self, images: np.ndarray, features: np.ndarray) -> None:
        """Write the next ``len(images)`` images (uint8 [n, 3, H, W]) and their features [n, F]."""
        fits = (
            images.shape[1:] == self._images.shape[1:]
            and images.dtype == np.uint8
            and features.shape == (images.shape[0], self._features.shape[1])
        )
        block = f"block of images {images.dtype} {list(images.shape)} and features {list(features.shape)}"
        rows = self._claim(images.shape[0], fits, block)
        self._images[rows] = images
        self._features[rows] = features.astype(np.float16)


def write_images(path: PathArg, ids: np.ndarray, images: np.ndarray, features: np.ndarray) -> Path:
    """Write a whole image store from in-memory arrays (``images`` uint8 [n, 3, H, W])."""
    with ImageWriter(path, ids, image_size=images.shape[-1], feature_dim=features.shape[1]) as writer:
        writer.append(images, features)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# readers


def _open_h5(path: PathArg) -> h5py.File:
    if not Path(path).is_file():
        raise LayoutError(path, "no such file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise LayoutError(path, f"not a readable HDF5 file ({exc})") from exc


class SubjectFile:
    """A validated, read-only ``subjXX.h5``. Small arrays are read on each call; keep what you need."""

    def __init__(self, path: PathArg) -> None:
        self.path = Path(path)
        self.file = _open_h5(self.path)
        try:
            attrs = self.file.attrs
            _check_format(self.path, attrs, SUBJECT_FORMAT)
            self.subject = str(attrs["subject"])
            self.space = str(attrs["space"])
            self.n_sessions = int(attrs["n_sessions"])
            self.n_trials = int(attrs["n_trials"])
            self.n_voxels = int(attrs["n_voxels"])
            if self.n_trials != TRIALS_PER_SESSION * self.n_sessions:
                raise LayoutError(self.path, f"n_trials={self.n_trials} != 750 * n_sessions={self.n_sessions}")
            betas = self.file.get("betas")
            self.n_beta_trials = int(betas.shape[0]) if isinstance(betas, h5py.Dataset) else 0
            if self.n_beta_trials % TRIALS_PER_SESSION or self.n_beta_trials > self.n_trials:
                raise LayoutError(self.path, f"{self.n_beta_trials} betas rows: not whole sessions of the trials")
            _check_spec(self.path, self.file, _subject_spec(self.n_sessions, self.n_voxels, self.n_beta_trials))
            for name in SPLITS:
                if f"splits/{name}" not in self.file:
                    raise LayoutError(self.path, f"missing dataset 'splits/{name}'")
            self.betas: h5py.Dataset = self.file["betas"]
        except BaseException:
            self.file.close()
            raise

    def behavior(self) -> np.ndarray:
        return self.file["behavior"][()]

    def memory_index(self) -> np.ndarray:
        return self.file["memory_index"][()]

    def coords(self) -> np.ndarray:
        return self.file["coords"][()]

    def voxel_indices(self) -> np.ndarray:
        return self.file["voxel_indices"][()]

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise LayoutError(self.path, f"unknown split {name!r}; splits are {', '.join(SPLITS)}")
        idx = self.file[f"splits/{name}"][()]
        _check_indices(
            self.path,
            f"split {name!r}",
            idx,
            _split_size(name, self.n_trials, self.n_beta_trials),
            ordered=True,
        )
        return idx

    def roi_names(self) -> list[str]:
        return sorted(self.file["rois"].keys()) if "rois" in self.file else []

    def roi(self, name: str) -> np.ndarray:
        if f"rois/{name}" not in self.file:
            raise LayoutError(self.path, f"no ROI {name!r}; ROIs here: {', '.join(self.roi_names()) or 'none'}")
        pos = self.file[f"rois/{name}"][()]
        _check_indices(self.path, f"ROI {name!r}", pos, self.n_voxels, ordered=False)
        return pos

    @property
    def challenge(self) -> ChallengeLayout | None:
        attrs = self.file.attrs
        if "n_challenge" not in attrs:
            return None
        return ChallengeLayout(int(attrs["n_challenge"]), int(attrs["n_lh"]), int(attrs["n_rh"]))

    def challenge_images(self) -> np.ndarray | None:
        return self.file["challenge_images"][()] if "challenge_images" in self.file else None

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> SubjectFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ImageFile:
    """A validated, read-only ``images.h5``; ``ids`` is held in memory to map ids to rows."""

    def __init__(self, path: PathArg) -> None:
        self.path = Path(path)
        self.file = _open_h5(self.path)
        try:
            attrs = self.file.attrs
            _check_format(self.path, attrs, IMAGES_FORMAT)
            self.image_size = int(attrs["image_size"])
            self.feature_dim = int(attrs["feature_dim"])
            ids = self.file.get("ids")
            n_images = int(ids.shape[0]) if isinstance(ids, h5py.Dataset) else 0
            _check_spec(self.path, self.file, _images_spec(n_images, self.image_size, self.feature_dim))
            self.ids: np.ndarray = self.file["ids"][()]
            self.images: h5py.Dataset = self.file["images"]
            self.features: h5py.Dataset = self.file["features"]
        except BaseException:
            self.file.close()
            raise

    def feature_rows(self, rows: np.ndarray) -> np.ndarray:
        """``features[rows]`` for sorted unique ``rows``, read in large blocks (fast for many rows,
        where HDF5 point selection is slow)."""
        out = np.empty((len(rows), self.feature_dim), dtype=np.float16)
        for start in range(0, len(self.ids), FEATURE_READ_BLOCK):
            lo, hi = np.searchsorted(rows, [start, start + FEATURE_READ_BLOCK])
            if hi > lo:
                stop = min(start + FEATURE_READ_BLOCK, int(rows[hi - 1]) + 1)
                out[lo:hi] = self.features[start:stop][rows[lo:hi] - start]
        return out

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each image id; ``BLANK`` ids map to ``BLANK``. Raises if an id is not stored."""
        ids = np.asarray(ids)
        rows = np.searchsorted(self.ids, ids).clip(max=len(self.ids) - 1)
        missing = (ids != BLANK) & (self.ids[rows] != ids)
        if missing.any():
            raise LayoutError(
                self.path,
                f"{np.unique(ids[missing]).size} image ids are not stored, e.g. {np.unique(ids[missing])[:5].tolist()}",
            )
        return np.where(ids == BLANK, BLANK, rows)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> ImageFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_subject(path: PathArg) -> SubjectFile:
    return SubjectFile(path)


def open_images(path: PathArg) -> ImageFile:
    return ImageFile(path)


def subject_path(data_dir: PathArg, subject: str, space: str = DEFAULT_SPACE) -> Path:
    """``subjXX.h5`` for the default space, ``subjXX.SPACE.h5`` for another (``subj01.fship.h5``)."""
    return Path(data_dir) / (f"{subject}.h5" if space == DEFAULT_SPACE else f"{subject}.{space}.h5")


def subject_files(data_dir: PathArg) -> list[Path]:
    """Every subject file in ``data_dir``, of every space, sorted by name."""
    return sorted(p for p in Path(data_dir).glob("subj*.h5") if _SUBJECT_FILE.fullmatch(p.name))


def list_subjects(data_dir: PathArg, space: str = DEFAULT_SPACE) -> list[str]:
    """Subject ids (``subj01``...) with a file of ``space`` in ``data_dir``, sorted."""
    found = (_SUBJECT_FILE.fullmatch(p.name) for p in Path(data_dir).glob("subj*.h5"))
    return sorted(m.group(1) for m in found if m and (m.group(2) or DEFAULT_SPACE) == space)
