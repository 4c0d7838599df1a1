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
from jobs.data.expdesign import ExpDesign, read_expdesign
from jobs.data.inputs import subject_name
from jobs.data.layout import (
    N_SLOTS,
    TRIALS_PER_SESSION,
    SubjectMeta,
    SubjectWriter,
    subject_path,
)
from jobs.data.memory import memory_index_from_design
from jobs.data.nsd_images import challenge_images
from jobs.data.params import BETA_DIRS, PREPARE_NSD_SWITCHES, SPACES, file_space
from jobs.data.progress import JobReporter, Reporter
from jobs.data.responses import Responses, read_responses
from jobs.data.resume import RECIPE_ATTR, recipe, subject_done
from jobs.data.spaces import BUILDERS, VoxelSpace
from jobs.data.splits import split_trials
from memq.job import UserError

if TYPE_CHECKING:
    from memq.job import JobContext

PREDICT_SESSIONS = 3


@dataclass(frozen=True)
class NsdSources:
    """Where one subject's inputs are, in the directory trees of the NSD and Algonauts downloads."""

    nsd_dir: Path
    alg_dir: Path
    subject: str
    space: str = "fsaverage"  # jobs/data/spaces.py
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

    def volume_betas(self, session: int) -> Path:
        """The func1mm betas of a session: one 4-d NIfTI [x, y, z, 750]."""
        return self._subject_betas / f"func1mm/{BETA_DIRS[self.beta]}/betas_session{session:02d}.nii.gz"

    def func1mm_roi(self, name: str) -> Path:
        return self.nsd_dir / f"nsddata/ppdata/{self.subject}/func1mm/roi/{name}.nii.gz"

    def surface_label(self, hemi: str, name: str) -> Path:
        """An NSD label on fsaverage (``lh.nsdgeneral.mgz``): NSD's own, whatever --fsaverage-dir says."""
        return self.nsd_dir / f"nsddata/freesurfer/fsaverage/label/{hemi}.{name}.mgz"

    @property
    def file_space(self) -> str:
        """The prepared files' space name: ``fship``, ``fship_b2``, ... (jobs/data/params.file_space)."""
        return file_space(self.space, self.beta)

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
    def _subject_betas(self) -> Path:
        return self.nsd_dir / f"nsddata_betas/ppdata/{self.subject}"

    @property
    def _betas_dir(self) -> Path:
        """The fsaverage betas (every space but func1mm_hip reads them)."""
        return self._subject_betas / f"fsaverage/{BETA_DIRS[self.beta]}"

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


@dataclass
class _Prepared:
    meta: SubjectMeta
    space: VoxelSpace
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
    space = BUILDERS[src.space](src)
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
        coords=space.coords,
        voxel_indices=space.voxel_indices,
        rois=space.rois,
        n_beta_trials=TRIALS_PER_SESSION * n_train,
        challenge=space.challenge,
        challenge_images=test_images,
        attrs={RECIPE_ATTR: src.recipe(), "source": "nsd", "beta": src.beta, **space.attrs},
    )
    return _Prepared(meta, space, n_train)


def available_subjects(nsd_dir: Path) -> list[str]:
    """Subjects with a ``responses.tsv`` in the NSD tree."""
    found = sorted(p.parent.parent.name for p in nsd_dir.glob("nsddata/ppdata/subj*/behav/responses.tsv"))
    if not found:
        raise UserError("no subject with nsddata/ppdata/subjXX/behav/responses.tsv", where=str(nsd_dir))
    return found


def prepare_subject(src: NsdSources, out_dir: Path, *, force: bool = False, reporter: Reporter | None = None) -> bool:
    """Write ``out_dir/subjXX.h5`` (``subjXX.SPACE.h5`` for another space, jobs/data/FORMAT.md);
    False (nothing done) if a complete file from the same options is there."""
    reporter = reporter or Reporter()
    path = subject_path(out_dir, src.subject, src.file_space)
    if not force and subject_done(path, src.recipe()):
        reporter.note(f"{src.subject}: {path} is complete, skipped (--force rebuilds it)")
        return False
    prepared = _read_inputs(src)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (
        reporter.task(f"{src.subject} betas (sessions)", prepared.n_train_sessions) as advance,
        SubjectWriter(path, prepared.meta) as writer,
    ):
        for session in range(1, prepared.n_train_sessions + 1):
            writer.append_betas(prepared.space.session_betas(session))
            advance(1)
    reporter.note(
        f"{src.subject}: {prepared.n_train_sessions + PREDICT_SESSIONS} sessions ({PREDICT_SESSIONS} held out), "
        f"space {src.file_space}: {prepared.space.summary} -> {path}"
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
