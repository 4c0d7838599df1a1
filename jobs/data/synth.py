"""Synthetic prepared data with a planted ground truth, in the layout of ``jobs/data/FORMAT.md``.

Each subject sees NSD-like runs of low-frequency random images (see ``synth_images``); its
responses are ``signal + N(0, noise^2)`` where the signal is a known voxel-wise linear map (see
``synth_signal``) of a few factors of the T=0 image (a random linear map of its 4x4-pooled
pixels) and one behaviour factor (RT). Betas are then z-scored per session and voxel, like real
betas. The best achievable validation Pearson r of voxel v is
``r_ceiling_v = signal_std_v / sqrt(signal_std_v^2 + noise^2)``.

Besides the layout files, ``DIR/synth_truth.h5`` holds the truth:

    attrs: noise, seed
    subjXX/latent         float64 [n_trials, n_factors + 1]  factors per trial (last: behaviour)
    subjXX/mix            float64 [n_factors + 1, n_voxels]
    subjXX/mean, std      float64 [n_voxels]  moments of latent @ mix over the subject's trials
    subjXX/signal_std     float64 [n_voxels]
    subjXX/r_ceiling      float64 [n_voxels]
    subjXX/betas_predict  float16 [750 * n_predict_sessions, n_voxels]  targets of the predict split

and ``DIR/truth/`` the test truth of the predict split in the format of ``jobs/data/TRUTH.md``, for
``memq score`` (see ``synth_truth``; written when there are predict sessions), marked synthetic by
``DIR/truth/synthetic.json``. The subject files say so too: space ``"synthetic"`` and the attributes
``synth_seed``, ``synth_noise`` and ``synth_r_ceiling_mean`` (the subject's mean ``r_ceiling``).

Usage: ``memq data synth --out DIR [--sessions 40 --voxels 40000 --image-size 224 ...]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from rich.progress import Progress

from jobs.data.atomic import AtomicH5
from jobs.data.behavior import behavior_table
from jobs.data.layout import (
    IMAGES_FILE,
    N_SLOTS,
    TRIALS_PER_SESSION,
    ImageWriter,
    PathArg,
    SubjectMeta,
    SubjectWriter,
    subject_path,
)
from jobs.data.memory import memory_index_from_design
from jobs.data.splits import split_trials
from jobs.data.synth_images import SIGNAL_POOL, feature_projection, image_features, pooled, render_images
from jobs.data.synth_signal import PlantedMap, plant
from jobs.data.synth_subject import behavior_base, trial_design, voxel_layout
from jobs.data.synth_truth import mark_synthetic, write_synth_truth

TRUTH_FILE = "synth_truth.h5"
N_IMAGE_IDS = 73_000
IMAGE_BLOCK_BYTES = 2**25  # bounds the float buffer of one block of rendered images


@dataclass
class SynthInfo:
    data_dir: Path
    subjects: list[str]
    noise: float
    r_ceiling: dict[str, np.ndarray]  # per subject, per voxel
    r_ceiling_mean: float  # over all voxels of all subjects
    n_sessions: int
    n_train_sessions: int
    image_size: int
    feature_dim: int


@dataclass
class SubjectTruth:
    planted: PlantedMap
    latent: np.ndarray
    r_ceiling: np.ndarray
    betas_predict: np.ndarray

    def signal(self, trials: np.ndarray) -> np.ndarray:
        """float32 [len(trials), n_voxels]: the noiseless planted signal of these global trials."""
        return self.planted.signal(self.latent[trials])


def load_truth(data_dir: PathArg, subject: str) -> SubjectTruth:
    with h5py.File(Path(data_dir) / TRUTH_FILE, "r") as f:
        g = f[subject]
        planted = PlantedMap(g["mix"][()], g["mean"][()], g["std"][()], g["signal_std"][()])
        return SubjectTruth(planted, g["latent"][()], g["r_ceiling"][()], g["betas_predict"][()])


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / (x.std(0) + 1e-8)


def _write_images(
    path: Path, ids: np.ndarray, rng: np.random.Generator, image_size: int, feature_dim: int, progress: Progress
) -> np.ndarray:
    """Render and store the image pool block by block; return its 4x4-pooled pixels."""
    projection = feature_projection(rng, feature_dim)
    block = max(1, IMAGE_BLOCK_BYTES // (12 * image_size * image_size))
    signal_pixels = np.empty((ids.size, 3 * SIGNAL_POOL * SIGNAL_POOL), dtype=np.float32)
    task = progress.add_task("images", total=ids.size)
    with ImageWriter(path, ids, image_size, feature_dim) as writer:
        for start in range(0, ids.size, block):
            images = render_images(rng, min(block, ids.size - start), image_size)
            writer.append(images, image_features(images, projection))
            signal_pixels[start : start + len(images)] = pooled(images, SIGNAL_POOL)
            progress.advance(task, len(images))
    return signal_pixels


@dataclass
class _Setup:
    """What every subject shares: the run's settings, the image pool and the image-factor map."""

    out_dir: Path
    n_sessions: int
    n_train_sessions: int
    repeats: int
    noise: float
    signal_std: tuple[float, float]
    behavior_share: float
    seed: int
    ids: np.ndarray
    signal_pixels: np.ndarray
    factor_map: np.ndarray


def _write_subject(
    setup: _Setup,
    truth: h5py.Group,
    subject: str,
    images: np.ndarray,
    n_voxels: int,
    seed: np.random.SeedSequence,
    progress: Progress,
) -> np.ndarray:
    """Write one subject file and its truth group; return the per-voxel ceiling."""
    rng = np.random.default_rng(seed)
    design = trial_design(rng, images, setup.n_sessions, setup.repeats)
    memory_index = memory_index_from_design(design)
    current = memory_index[:, N_SLOTS - 1]
    behavior = behavior_table(behavior_base(rng, design), current)
    voxels = voxel_layout(rng, n_voxels)
    pixels = setup.signal_pixels[np.searchsorted(setup.ids, current)]
    image_factors = (pixels - setup.signal_pixels.mean(0)) @ setup.factor_map
    latent = np.column_stack([image_factors, behavior[:-1, 0]]).astype(np.float64)
    planted = plant(rng, voxels.coords, latent, setup.signal_std, setup.behavior_share)
    r_ceiling = planted.r_ceiling(setup.noise)
    splits = split_trials(current, setup.n_train_sessions)
    meta = SubjectMeta(
        subject=subject,
        space="synthetic",
        behavior=behavior,
        memory_index=memory_index,
        splits=splits,
        coords=voxels.coords,
        voxel_indices=voxels.voxel_indices,
        rois=voxels.rois,
        n_beta_trials=TRIALS_PER_SESSION * setup.n_train_sessions,
        challenge=voxels.challenge,
        challenge_images=np.unique(current[splits["predict"]]),
        attrs={"synth_noise": setup.noise, "synth_r_ceiling_mean": float(r_ceiling.mean()), "synth_seed": setup.seed},
    )
    group = truth.create_group(subject)
    arrays = {"latent": latent, "mix": planted.mix, "mean": planted.mean, "std": planted.std}
    arrays |= {"signal_std": planted.signal_std, "r_ceiling": r_ceiling}
    for name, data in arrays.items():
        group.create_dataset(name, data=data)
    betas_predict = group.create_dataset("betas_predict", shape=(len(splits["predict"]), n_voxels), dtype=np.float16)
    task = progress.add_task(subject, total=setup.n_sessions)
    noise_rng = np.random.default_rng(seed.spawn(1)[0])
    with SubjectWriter(subject_path(setup.out_dir, subject), meta) as writer:
        for session in range(setup.n_sessions):
            trials = slice(session * TRIALS_PER_SESSION, (session + 1) * TRIALS_PER_SESSION)
            signal = planted.signal(latent[trials])
            noisy = signal + setup.noise * noise_rng.standard_normal(signal.shape, dtype=np.float32)
            betas = _zscore(noisy).astype(np.float16)
            if session < setup.n_train_sessions:
                writer.append_betas(betas)
            else:
                betas_predict[trials.start - meta.n_beta_trials : trials.stop - meta.n_beta_trials] = betas
            progress.advance(task)
    if len(splits["predict"]):
        write_synth_truth(setup.out_dir, meta, betas_predict[()], planted.signal_std, setup.noise)
    return r_ceiling


def synthesize(
    out_dir: PathArg,
    n_subjects: int = 2,
    n_sessions: int = 4,
    n_voxels: int | Sequence[int] = (300, 240),
    image_size: int = 32,
    feature_dim: int = 16,
    noise: float = 1.0,
    signal_std: tuple[float, float] = (0.5, 1.5),
    behavior_share: float = 0.1,
    n_factors: int = 6,
    n_predict_sessions: int = 1,
    repeats: int = 3,
    shared_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> SynthInfo:
    """Write ``images.h5``, ``subj01.h5``... and ``synth_truth.h5`` into ``out_dir``.

    Each subject runs ``n_sessions`` sessions, the last ``n_predict_sessions`` of them without
    stored betas (the predict split); it sees ``ceil(750 * n_sessions / repeats)`` images, a
    ``shared_fraction`` of them common to all subjects. Deterministic in ``seed``.
    """
    voxel_counts = [n_voxels] * n_subjects if isinstance(n_voxels, int) else list(n_voxels)
    n_train_sessions = n_sessions - n_predict_sessions
    if len(voxel_counts) != n_subjects or n_train_sessions < 1 or n_predict_sessions < 0:
        raise ValueError("need one voxel count per subject and at least one training session")
    if not noise > 0:
        raise ValueError(f"noise must be positive (the test truth's ncsnr is signal / noise), got {noise}")
    per_subject = math.ceil(TRIALS_PER_SESSION * n_sessions / repeats)
    n_shared = round(shared_fraction * per_subject)
    n_pool = n_shared + n_subjects * (per_subject - n_shared)
    if n_pool > N_IMAGE_IDS:
        raise ValueError(f"{n_pool} images needed, more than the {N_IMAGE_IDS} NSD image ids")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(seed)
    world_seed, *subject_seeds = root.spawn(n_subjects + 1)
    rng = np.random.default_rng(world_seed)
    ids = np.sort(rng.choice(N_IMAGE_IDS, n_pool, replace=False))
    order = rng.permutation(ids)
    shared, own = order[:n_shared], order[n_shared:].reshape(n_subjects, -1)
    subjects = [f"subj{s + 1:02d}" for s in range(n_subjects)]
    ceilings: dict[str, np.ndarray] = {}
    with Progress(disable=not progress) as bar:
        signal_pixels = _write_images(out / IMAGES_FILE, ids, rng, image_size, feature_dim, bar)
        factor_map = rng.standard_normal((signal_pixels.shape[1], n_factors))
        setup = _Setup(
            out_dir=out,
            n_sessions=n_sessions,
            n_train_sessions=n_train_sessions,
            repeats=repeats,
            noise=noise,
            signal_std=signal_std,
            behavior_share=behavior_share,
            seed=seed,
            ids=ids,
            signal_pixels=signal_pixels,
            factor_map=factor_map,
        )
        with AtomicH5(out / TRUTH_FILE) as truth:
            truth.file.attrs.update(noise=noise, seed=seed)
            for s, subject in enumerate(subjects):
                images = np.concatenate([shared, own[s]])
                ceilings[subject] = _write_subject(
                    setup, truth.file, subject, images, voxel_counts[s], subject_seeds[s], bar
                )
    if n_predict_sessions:
        mark_synthetic(out, seed, noise)
    return SynthInfo(
        data_dir=out,
        subjects=subjects,
        noise=noise,
        r_ceiling=ceilings,
        r_ceiling_mean=float(np.concatenate(list(ceilings.values())).mean()),
        n_sessions=n_sessions,
        n_train_sessions=n_train_sessions,
        image_size=image_size,
        feature_dim=feature_dim,
    )
