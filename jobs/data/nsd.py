"""`memq data prepare-nsd` for one subject: NSD + Algonauts 2023 files -> ``subjXX.h5`` (mem-spec 1.1-1.8).

Also the job kind ``data.prepare_nsd`` (params nsd_dir, alg_dir, out, subject, space, beta,
fsaverage_dir, force). Nothing is hard-coded per subject: the completed sessions are the rows of
``responses.tsv`` / 750 and the last 3 of them are the held-out predict sessions, whose betas are
never read. Betas stream one session at a time into the atomically published file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jobs.compat import data_switch_values
from jobs.data.behavior import base_behavior, behavior_table
from jobs.data.betas import check_nan, zscore_session
from jobs.data.expdesign import ExpDesign, read_expdesign
from jobs.data.fsaverage import VertexSelection, noise_ceiling, read_mgh, read_sphere, select_vertices, side_by_side
from jobs.data.inputs import integer_valued, load_npy, reason, subject_name
from jobs.data.layout import (
    N_SLOTS,
    STREAM_ROIS,
    TRIALS_PER_SESSION,
    ChallengeLayout,
    SubjectMeta,
    SubjectWriter,
    subject_path,
)
from jobs.data.memory import memory_index_from_design
from jobs.data.nsd_images import challenge_images
from jobs.data.params import BETA_DIRS, PREPARE_NSD_SWITCHES, SPACES
from jobs.data.progress import JobReporter, Reporter
from jobs.data.responses import Responses, read_responses
from jobs.data.resume import RECIPE_ATTR, recipe, subject_done
from jobs.data.rois import random_rois
from jobs.data.splits import split_trials
from memq.job import UserError

if TYPE_CHECKING:
    from memq.job import JobContext

PREDICT_SESSIONS = 3
HEMIS = ("lh", "rh")
# Algonauts stream labels 0..7 (mapping_streams.npy) and their ROI names (label 0 is RSC here)
STREAM_LABELS = ("unknown", "early", "midventral", "midlateral", "midparietal", "ventral", "lateral", "parietal")


@dataclass(frozen=True)
class NsdSources:
    """Where one subject's inputs are, in the directory trees of the NSD and Algonauts downloads."""

    nsd_dir: Path
    alg_dir: Path
    subject: str
    space: str = "fsaverage"
    beta: str = "b3"
    fsaverage_dir: Path | None = None
    nc_search: str = "bisect"  # switch NC_SEARCH (jobs/compat.py): "scale" is the reference's search

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise UserError(f"space {self.space!r} is not supported", hint=f"one of {', '.join(SPACES)}")
        if self.beta not in BETA_DIRS:
            raise UserError(f"beta version {self.beta!r} is not known", hint="b3 (GLMdenoise_RR) or b2 (fithrf)")
        for what, directory in (("NSD", self.nsd_dir), ("Algonauts 2023", self.alg_dir)):
            if not directory.is_dir():
                raise UserError(f"no {what} directory here", where=str(directory))

    @property
    def expdesign(self) -> Path:
        return self.nsd_dir / "nsddata/experiments/nsd/nsd_expdesign.mat"

    @property
    def responses(self) -> Path:
        return self.nsd_dir / f"nsddata/ppdata/{self.subject}/behav/responses.tsv"

    def betas(self, hemi: str, session: int) -> Path:
        return self._betas_dir / f"{hemi}.betas_session{session:02d}.mgh"

    def ncsnr(self, hemi: str) -> Path:
        return self._betas_dir / f"{hemi}.ncsnr.mgh"

    def sphere(self, hemi: str) -> Path:
        return (self.fsaverage_dir or self.nsd_dir / "nsddata/freesurfer/fsaverage") / f"surf/{hemi}.sphere"

    def challenge_mask(self, hemi: str) -> Path:
        return self._roi_masks / f"{hemi}.all-vertices_fsaverage_space.npy"

    def streams(self, hemi: str) -> Path:
        return self._roi_masks / f"{hemi}.streams_challenge_space.npy"

    @property
    def stream_names(self) -> Path:
        return self._roi_masks / "mapping_streams.npy"

    @property
    def test_images(self) -> Path:
        return self.alg_dir / self.subject / "test_split/test_images"

    @property
    def _betas_dir(self) -> Path:
        return self.nsd_dir / f"nsddata_betas/ppdata/{self.subject}/{self.space}/{BETA_DIRS[self.beta]}"

    @property
    def _roi_masks(self) -> Path:
        return self.alg_dir / self.subject / "roi_masks"

    def recipe(self) -> str:
        options = {"source": "nsd", "subject": self.subject, "space": self.space, "beta": self.beta}
        # the default search is left out, so files written before the switch existed stay complete
        return recipe(options | ({"nc_search": self.nc_search} if self.nc_search != "bisect" else {}))


def _memory_and_behavior(src: NsdSources, design: ExpDesign, responses: Responses) -> tuple[np.ndarray, np.ndarray]:
    n_sessions = responses.n_sessions
    slots = design.slots(src.subject)
    if n_sessions > slots.shape[0]:
        where = str(responses.path)
        raise UserError(f"{n_sessions} sessions, more than the {slots.shape[0]} of the design", where=where)
    memory_index = memory_index_from_design(slots[:n_sessions])
    wrong = np.flatnonzero(memory_index[:, N_SLOTS - 1] != responses.images)
    if wrong.size:
        g = int(wrong[0])
        raise UserError(
            f"73KID of trial {g} (session {g // TRIALS_PER_SESSION + 1}) is {responses.images[g] + 1}, but "
            f"nsd_expdesign.mat shows {memory_index[g, N_SLOTS - 1] + 1} to {src.subject} ({wrong.size} trials differ)",
            where=str(responses.path),
        )
    try:
        base = base_behavior(responses.records)
    except ValueError as exc:
        raise UserError(str(exc), where=str(responses.path)) from exc
    return memory_index, behavior_table(base, design.trial_images(src.subject))


def _challenge_mask(src: NsdSources) -> list[np.ndarray]:
    masks = []
    for hemi in HEMIS:
        path = src.challenge_mask(hemi)
        mask = load_npy(path, "Algonauts challenge-vertex mask")
        if mask.ndim != 1:
            raise UserError(f"mask is {list(mask.shape)}, expected one value per fsaverage vertex", where=str(path))
        masks.append(integer_valued(path, "the mask", mask, 0, 1).astype(bool))
    return masks


def _check_stream_names(path: Path) -> None:
    if not path.is_file():
        return
    try:  # the challenge stores this {label: name} dict pickled
        names = np.load(path, allow_pickle=True).item()
        ok = all(str(names[k]).lower() == name for k, name in enumerate(STREAM_LABELS) if k)
    except (ValueError, KeyError, AttributeError, OSError) as exc:
        raise UserError(f"not the Algonauts stream-label dict ({reason(exc)})", where=str(path)) from exc
    if not ok:
        raise UserError(f"stream labels are {names}, expected 1..7 = {', '.join(STREAM_LABELS[1:])}", where=str(path))


def _stream_rois(src: NsdSources, selection: VertexSelection) -> dict[str, np.ndarray]:
    _check_stream_names(src.stream_names)
    labels = []
    for hemi, n in zip(HEMIS, (selection.n_lh, selection.n_challenge - selection.n_lh), strict=True):
        path = src.streams(hemi)
        hemi_labels = load_npy(path, "Algonauts stream labels")
        if hemi_labels.shape != (n,):
            what = f"{list(hemi_labels.shape)} labels, expected one per challenge vertex ({n})"
            raise UserError(what, where=str(path))
        labels.append(integer_valued(path, "stream labels", hemi_labels, 0, len(STREAM_LABELS) - 1))
    label = np.concatenate(labels)
    rois = {name: np.flatnonzero(label == k) for k, name in enumerate(STREAM_ROIS[:-1])}
    rois[STREAM_ROIS[-1]] = np.arange(selection.n_challenge, selection.voxel_indices.size)  # R: the added voxels
    return rois


def _session_betas(src: NsdSources, session: int, voxels: np.ndarray, sizes: list[int]) -> np.ndarray:
    """float16 [750, n_voxels] of one session, z-scored per voxel, one hemisphere file at a time."""
    block = np.empty((TRIALS_PER_SESSION, voxels.size), dtype=np.float16)
    offset = 0
    for hemi, n in zip(HEMIS, sizes, strict=True):
        path = src.betas(hemi, session)
        data = read_mgh(path, f"{src.beta} betas of session {session}", n, TRIALS_PER_SESSION)
        columns = np.flatnonzero((voxels >= offset) & (voxels < offset + n))
        part = data.T[:, voxels[columns] - offset]  # trial rows are contiguous in the file
        del data  # unmap the file before the next one is read
        check_nan(part, path)
        block[:, columns] = zscore_session(part)  # int16 in NSD (300 x % signal change): the z-score drops the scale
        offset += n
    return block


@dataclass
class _Prepared:
    meta: SubjectMeta
    selection: VertexSelection
    hemi_sizes: list[int]
    n_train_sessions: int


def _read_inputs(src: NsdSources) -> _Prepared:
    """Everything of the subject but the betas, validated."""
    design = read_expdesign(src.expdesign)
    responses = read_responses(src.responses)
    n_train = responses.n_sessions - PREDICT_SESSIONS
    if n_train < 1:
        raise UserError(
            f"{responses.n_sessions} sessions; need more than the {PREDICT_SESSIONS} held-out ones",
            where=str(src.responses),
        )
    memory_index, behavior = _memory_and_behavior(src, design, responses)
    splits = split_trials(memory_index[:, N_SLOTS - 1], n_train)
    masks = _challenge_mask(src)
    sizes = [m.size for m in masks]
    ncsnr = [read_mgh(src.ncsnr(h), "noise-ceiling SNR", n, 1)[:, 0] for h, n in zip(HEMIS, sizes, strict=True)]
    nc = noise_ceiling(np.concatenate(ncsnr))
    challenge = np.concatenate(masks)
    if not challenge.any():
        raise UserError("the challenge masks select no vertex", where=str(src.challenge_mask("lh")))
    selection = select_vertices(challenge, nc, sizes[0], src.nc_search)
    spheres = [read_sphere(src.sphere(h), n) for h, n in zip(HEMIS, sizes, strict=True)]
    coords = side_by_side(*spheres)[selection.voxel_indices]
    rois = _stream_rois(src, selection) | random_rois(selection.voxel_indices.size)
    test_images = challenge_images(src.test_images)
    outside = np.setdiff1d(test_images, memory_index[splits["predict"], N_SLOTS - 1])
    if outside.size:
        raise UserError(
            f"{outside.size} test images are not shown in the held-out sessions, e.g. nsd-{outside[0]:05d}",
            where=str(src.test_images),
        )
    meta = SubjectMeta(
        subject=src.subject,
        space=src.space,
        behavior=behavior,
        memory_index=memory_index,
        splits=splits,
        coords=coords,
        voxel_indices=selection.voxel_indices,
        rois=rois,
        n_beta_trials=TRIALS_PER_SESSION * n_train,
        challenge=ChallengeLayout(selection.n_challenge, selection.n_lh, selection.n_challenge - selection.n_lh),
        challenge_images=test_images,
        attrs={
            RECIPE_ATTR: src.recipe(),
            "source": "nsd",
            "beta": src.beta,
            "nc_threshold": selection.threshold,
            "nc_search": src.nc_search,
            "nc_mean_challenge": selection.challenge_nc,
            "nc_mean_added": selection.added_nc,
        },
    )
    return _Prepared(meta, selection, sizes, n_train)


def available_subjects(nsd_dir: Path) -> list[str]:
    """Subjects with a ``responses.tsv`` in the NSD tree."""
    found = sorted(p.parent.parent.name for p in nsd_dir.glob("nsddata/ppdata/subj*/behav/responses.tsv"))
    if not found:
        raise UserError("no subject with nsddata/ppdata/subjXX/behav/responses.tsv", where=str(nsd_dir))
    return found


def prepare_subject(src: NsdSources, out_dir: Path, *, force: bool = False, reporter: Reporter | None = None) -> bool:
    """Write ``out_dir/subjXX.h5``; False (nothing done) if a complete file from the same options is there."""
    reporter = reporter or Reporter()
    path = subject_path(out_dir, src.subject)
    if not force and subject_done(path, src.recipe()):
        reporter.note(f"{src.subject}: {path} is complete, skipped (--force rebuilds it)")
        return False
    prepared = _read_inputs(src)
    out_dir.mkdir(parents=True, exist_ok=True)
    voxels = prepared.selection.voxel_indices
    with (
        reporter.task(f"{src.subject} betas (sessions)", prepared.n_train_sessions) as advance,
        SubjectWriter(path, prepared.meta) as writer,
    ):
        for session in range(1, prepared.n_train_sessions + 1):
            writer.append_betas(_session_betas(src, session, voxels, prepared.hemi_sizes))
            advance(1)
    s = prepared.selection
    reporter.note(
        f"{src.subject}: {prepared.n_train_sessions + PREDICT_SESSIONS} sessions ({PREDICT_SESSIONS} held out), "
        f"{voxels.size} voxels = {s.n_challenge} challenge + {voxels.size - s.n_challenge} with NC > "
        f"{s.threshold:.4f} (mean NC {s.added_nc:.4f} vs {s.challenge_nc:.4f}) -> {path}"
    )
    return True


def run(ctx: JobContext) -> None:
    """Job kind ``data.prepare_nsd``: one subject per job."""
    p = ctx.params
    switches = data_switch_values(p, PREPARE_NSD_SWITCHES)
    src = NsdSources(
        nsd_dir=Path(p["nsd_dir"]),
        alg_dir=Path(p["alg_dir"]),
        subject=subject_name(p["subject"]),
        space=p.get("space", "fsaverage"),
        beta=p.get("beta", "b3"),
        fsaverage_dir=Path(p["fsaverage_dir"]) if p.get("fsaverage_dir") else None,
        nc_search=switches["NC_SEARCH"],
    )
    prepare_subject(src, Path(p["out"]), force=bool(p.get("force", False)), reporter=JobReporter(ctx))
