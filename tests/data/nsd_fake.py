"""NSD and Algonauts 2023 input trees in the real file formats, with random content.

For the tests (a few hundred vertices per hemisphere) and the prepare-nsd benchmark (the real
163,842): ``nsd_expdesign.mat`` (MATLAB v5, 1-based), ``responses.tsv`` (NaN where NSD has
them), int16 ``.mgh`` betas of the training sessions only (the held-out sessions have none at
challenge time), ``ncsnr.mgh``, FreeSurfer spheres, and per subject the Algonauts challenge masks,
stream labels, ``mapping_streams.npy`` and training/test PNGs. Nothing here reads real data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jobs.data.behavior import memory_counts
from jobs.data.layout import BLANK, RUNS_PER_SESSION, SLOTS_PER_RUN, TRIALS_PER_SESSION
from jobs.data.synth_subject import trial_design

FSAVERAGE_VERTICES = 163_842
N_DESIGN_SESSIONS = 40
N_SUBJECTS = 8
N_IMAGES = 10_000
N_SHARED = 1_000
REPEATS = 3
PREDICT_SESSIONS = 3
TIME_ORIGIN = 737_791.4  # a MATLAB serial date (days), 9:36 in the morning
STREAM_NAMES = {
    0: "Unknown",
    1: "early",
    2: "midventral",
    3: "midlateral",
    4: "midparietal",
    5: "ventral",
    6: "lateral",
    7: "parietal",
}
HEADER = (
    "SUBJECT",
    "SESSION",
    "RUN",
    "TRIAL",
    "73KID",
    "10KID",
    "TIME",
    "ISOLD",
    "ISCORRECT",
    "RT",
    "CHANGEMIND",
    "MEMORYRECENT",
    "MEMORYFIRST",
    "ISOLDCURRENT",
    "ISCORRECTCURRENT",
    "TOTAL1",
    "TOTAL2",
    "BUTTON",
    "MISSINGDATA",
)


@dataclass
class FakeSubject:
    name: str
    n_sessions: int
    responses: dict[str, np.ndarray]  # the columns written to responses.tsv
    challenge: list[np.ndarray]  # bool per vertex, lh and rh
    streams: list[np.ndarray]  # label per challenge vertex, lh and rh
    ncsnr: list[np.ndarray]  # per vertex, lh and rh
    test_images: list[int] = field(default_factory=list)  # 73k ids in test-file order
    thalamus: np.ndarray | None = None  # func1mm label volumes (with ``volume``): -1 outside the brain
    mtl: np.ndarray | None = None


@dataclass
class FakeNsd:
    nsd_dir: Path
    alg_dir: Path
    n_vertices: int  # per hemisphere
    masterordering: np.ndarray  # 1-based, as in the file
    subjectim: np.ndarray  # 1-based
    stimpattern: np.ndarray  # 0/1 [40, 12, 75]
    spheres: list[np.ndarray]
    subjects: dict[str, FakeSubject]

    def betas_dir(self, subject: str, beta_dir: str = "betas_fithrf_GLMdenoise_RR", space: str = "fsaverage") -> Path:
        return self.nsd_dir / f"nsddata_betas/ppdata/{subject}/{space}/{beta_dir}"

    def surface_label(self, hemi: str, name: str) -> Path:
        return self.nsd_dir / f"nsddata/freesurfer/fsaverage/label/{hemi}.{name}.mgz"

    def nsdgeneral(self, hemi: str) -> Path:
        return self.surface_label(hemi, "nsdgeneral")

    def func1mm_roi(self, subject: str, name: str) -> Path:
        return self.nsd_dir / f"nsddata/ppdata/{subject}/func1mm/roi/{name}.nii.gz"


def _design(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    stimpattern = (trial_design(rng, np.arange(N_IMAGES), N_DESIGN_SESSIONS, REPEATS) != BLANK).astype(np.uint8)
    masterordering = rng.permutation(np.repeat(np.arange(1, N_IMAGES + 1), REPEATS))
    pool = rng.permutation(73_000) + 1
    shared = np.sort(pool[:N_SHARED])
    own = pool[N_SHARED : N_SHARED + N_SUBJECTS * (N_IMAGES - N_SHARED)].reshape(N_SUBJECTS, -1)
    subjectim = np.hstack([np.tile(shared, (N_SUBJECTS, 1)), own])
    return masterordering, subjectim, stimpattern


def _responses(
    rng: np.random.Generator,
    number: int,
    images: np.ndarray,
    stimpattern: np.ndarray,
    masterordering: np.ndarray,
    n_sessions: int,
) -> dict[str, np.ndarray]:
    n = TRIALS_PER_SESSION * n_sessions
    session, run, slot = np.nonzero(stimpattern[:n_sessions])
    shown = images[:n]
    recent, first = memory_counts(shown)
    g = np.arange(n)
    seen = ~np.isnan(recent)
    prev = g - np.nan_to_num(recent).astype(np.int64) - 1
    old_current = seen & (session[np.where(seen, prev, 0)] == session)
    run_start = np.searchsorted(session * RUNS_PER_SESSION + run, session * RUNS_PER_SESSION + run)
    answered = rng.random(n) > 0.05
    button = np.where(answered, np.where(rng.random(n) < np.where(seen, 0.8, 0.2), 2.0, 1.0), np.nan)
    says_old = button == 2
    return {
        "SUBJECT": np.full(n, number),
        "SESSION": session + 1,
        "RUN": run + 1,
        "TRIAL": g - run_start + 1,
        "73KID": shown + 1,
        "10KID": masterordering[:n],
        "TIME": TIME_ORIGIN + 7.0 * session + (run * (SLOTS_PER_RUN + 15) + slot) * 4.0 / 86400,
        "ISOLD": seen.astype(float),
        "ISCORRECT": np.where(answered, (says_old == seen).astype(float), np.nan),
        "RT": np.where(answered, rng.uniform(400, 1500, n), np.nan),
        "CHANGEMIND": np.where(answered, (rng.random(n) < 0.03).astype(float), np.nan),
        "MEMORYRECENT": recent,
        "MEMORYFIRST": first,
        "ISOLDCURRENT": old_current.astype(float),
        "ISCORRECTCURRENT": np.where(answered, (says_old == old_current).astype(float), np.nan),
        "TOTAL1": rng.integers(0, 3, n).astype(float),
        "TOTAL2": rng.integers(0, 2, n).astype(float),
        "BUTTON": button,
        "MISSINGDATA": np.zeros(n),
    }


def write_responses(path: Path, columns: Mapping[str, np.ndarray]) -> None:
    """A tab-separated table like NSD's: header row, integers plain, missing values ``NaN``."""

    def text(value: float) -> str:
        if np.isnan(value):
            return "NaN"
        return str(int(value)) if value == int(value) else repr(float(value))

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = zip(*(columns[name] for name in HEADER), strict=True)
    path.write_text("\t".join(HEADER) + "\n" + "".join("\t".join(map(text, row)) + "\n" for row in rows))


def _save_mgh(path: Path, data: np.ndarray) -> None:
    import nibabel

    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.MGHImage(data, np.eye(4)), path)


def _save_nifti(path: Path, data: np.ndarray) -> None:
    import nibabel

    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0])), path)


def _label_volumes(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """NSD-like thalamus (labels 1..5) and MTL (1..10) volumes: -1 outside an ellipsoid brain, 0 in
    it, labels on random brain voxels (disjoint between the two, as in NSD)."""
    centre = (np.array(shape) - 1) / 2
    grid = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1)
    brain = (((grid - centre) / (np.array(shape) / 2)) ** 2).sum(-1) <= 1
    thalamus, mtl = (np.where(brain, 0, -1).astype(np.int16) for _ in range(2))
    inside = rng.permutation(np.flatnonzero(brain))
    n = inside.size // 6
    thalamus.reshape(-1)[inside[:n]] = rng.integers(1, 6, n)
    mtl.reshape(-1)[inside[n : 3 * n]] = rng.integers(1, 11, 2 * n)
    return thalamus, mtl


def _write_png(path: Path, rng: np.random.Generator, size: int) -> None:
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def write_fake_nsd(
    root: Path,
    sessions: Mapping[str, int],
    n_vertices: int = 600,
    challenge_fraction: float = 0.3,
    image_size: int = 8,
    images: bool = True,
    outside_snr_power: float = 1.0,
    seed: int = 0,
    on_session: Callable[[str, int], None] | None = None,
    volume: tuple[int, int, int] | None = None,
    beta_dirs: tuple[str, ...] = ("betas_fithrf_GLMdenoise_RR",),
) -> FakeNsd:
    """Write ``root/nsd`` and ``root/algonauts`` for the subjects of ``sessions`` (name: completed sessions).

    ``n_vertices`` per hemisphere (163,842 is real fsaverage); ``images=False`` skips the PNGs.
    ncsnr is uniform in [0.2, 1.2] on challenge vertices and ``0.9 * U ** outside_snr_power``
    elsewhere (a higher power: fewer high-NC vertices outside the mask, as on real cortex).
    ``on_session(subject, session)`` is called after each session's betas are written.
    ``volume`` (a func1mm shape) adds what the func1mm_hip and fship spaces read: the thalamus and
    MTL label volumes, 4-d int16 NIfTI betas per session and fsaverage ``nsdgeneral`` and ``HCP_MMP1`` labels
    (drawn from a generator of their own: the other files stay as without them). ``beta_dirs``:
    the beta versions written (the b2 ``betas_fithrf`` too, to prepare with ``--beta b2``).
    """
    rng = np.random.default_rng(seed)
    nsd_dir, alg_dir = root / "nsd", root / "algonauts"
    masterordering, subjectim, stimpattern = _design(rng)
    design_dir = nsd_dir / "nsddata/experiments/nsd"
    design_dir.mkdir(parents=True, exist_ok=True)
    import scipy.io
    from nibabel.freesurfer import write_geometry

    scipy.io.savemat(
        design_dir / "nsd_expdesign.mat",
        {
            "masterordering": masterordering[None].astype(np.float64),
            "subjectim": subjectim.astype(np.float64),
            "stimpattern": stimpattern.astype(np.float64),
            "sharedix": subjectim[0, :N_SHARED][None].astype(np.float64),
        },
    )
    spheres = []
    for hemi in ("lh", "rh"):
        points = rng.standard_normal((n_vertices, 3))
        spheres.append(100 * points / np.linalg.norm(points, axis=1, keepdims=True))
        surf = nsd_dir / "nsddata/freesurfer/fsaverage/surf"
        surf.mkdir(parents=True, exist_ok=True)
        write_geometry(str(surf / f"{hemi}.sphere"), spheres[-1], np.array([[0, 1, 2], [1, 2, 3]], dtype=np.int32))
    fake = FakeNsd(nsd_dir, alg_dir, n_vertices, masterordering, subjectim, stimpattern, spheres, {})
    for name, n_sessions in sessions.items():
        number = int(name.removeprefix("subj"))
        images_shown = subjectim[number - 1, masterordering - 1] - 1  # 0-based 73k ids of the designed trials
        columns = _responses(rng, number, images_shown, stimpattern, masterordering, n_sessions)
        write_responses(nsd_dir / f"nsddata/ppdata/{name}/behav/responses.tsv", columns)
        masks, streams, ncsnrs = [], [], []
        roi_dir = alg_dir / name / "roi_masks"
        roi_dir.mkdir(parents=True, exist_ok=True)
        for hemi in ("lh", "rh"):
            mask = rng.random(n_vertices) < challenge_fraction
            labels = rng.integers(0, len(STREAM_NAMES), mask.sum())
            outside = 0.9 * rng.random(n_vertices) ** outside_snr_power
            ncsnr = np.where(mask, rng.uniform(0.2, 1.2, n_vertices), outside)
            ncsnr[rng.choice(np.flatnonzero(~mask), 2, replace=False)] = np.nan  # no data outside the mask
            np.save(roi_dir / f"{hemi}.all-vertices_fsaverage_space.npy", mask.astype(np.float32))
            np.save(roi_dir / f"{hemi}.streams_challenge_space.npy", labels.astype(np.float32))
            _save_mgh(fake.betas_dir(name) / f"{hemi}.ncsnr.mgh", ncsnr.astype(np.float32).reshape(-1, 1, 1))
            masks.append(mask)
            streams.append(labels)
            ncsnrs.append(ncsnr)
        np.save(roi_dir / "mapping_streams.npy", np.array(STREAM_NAMES, dtype=object), allow_pickle=True)
        subject = FakeSubject(name, n_sessions, columns, masks, streams, ncsnrs)
        n_train = TRIALS_PER_SESSION * (n_sessions - PREDICT_SESSIONS)
        if images:
            shown = columns["73KID"] - 1
            test_ids = rng.permutation(np.setdiff1d(shown[n_train:], shown[:n_train]))
            subject.test_images = test_ids.tolist()
            for split, prefix, ids in (
                ("test_split/test_images", "test", test_ids),
                ("training_split/training_images", "train", np.unique(shown[:n_train])),
            ):
                (alg_dir / name / split).mkdir(parents=True, exist_ok=True)
                for k, image_id in enumerate(ids, start=1):
                    _write_png(alg_dir / name / split / f"{prefix}-{k:04d}_nsd-{image_id:05d}.png", rng, image_size)
        fake.subjects[name] = subject
        vol_rng = np.random.default_rng([seed, number])
        if volume is not None:
            subject.thalamus, subject.mtl = _label_volumes(vol_rng, volume)
            _save_nifti(fake.func1mm_roi(name, "thalamus"), subject.thalamus)
            _save_nifti(fake.func1mm_roi(name, "MTL"), subject.mtl)
        for session in range(1, n_sessions - PREDICT_SESSIONS + 1):
            for k, beta_dir in enumerate(beta_dirs):
                for hemi in ("lh", "rh"):
                    data = (rng if k == 0 else vol_rng).integers(
                        -900, 900, (n_vertices, 1, 1, TRIALS_PER_SESSION), dtype=np.int16
                    )
                    _save_mgh(fake.betas_dir(name, beta_dir) / f"{hemi}.betas_session{session:02d}.mgh", data)
                if volume is not None:
                    data = vol_rng.integers(-900, 900, (*volume, TRIALS_PER_SESSION), dtype=np.int16)
                    _save_nifti(fake.betas_dir(name, beta_dir, "func1mm") / f"betas_session{session:02d}.nii.gz", data)
            if on_session is not None:
                on_session(name, session)
    if volume is not None:
        label_rng = np.random.default_rng([seed, 0])
        for hemi, first_area in (("lh", 1), ("rh", 181)):  # HCP_MMP1 areas 1..180, rh numbered on from 181
            label = (label_rng.random(n_vertices) < 0.4).astype(np.float32).reshape(-1, 1, 1)
            _save_mgh(fake.nsdgeneral(hemi), label)
            areas = np.where(label_rng.random(n_vertices) < 0.1, 0, label_rng.integers(0, 180, n_vertices) + first_area)
            _save_mgh(fake.surface_label(hemi, "HCP_MMP1"), areas.astype(np.int32).reshape(-1, 1, 1))
    return fake
