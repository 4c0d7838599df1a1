"""`memq data import-mindeye2`: the MindEye2 release mapped onto the training layout (mem-spec 1.10).

Inputs (``--src``, the release as downloaded): ``betas_all_subjXX_fp32_renorm.hdf5`` (``betas``
[trials, voxels], row = global trial), ``coco_images_224_float16.hdf5`` (``images`` [73000, 3,
224, 224] in [0, 1]) and the webdataset shards ``wds/subjXX/{train,new_test}/*.tar`` whose
samples hold ``behav.npy`` ([1, 17]: 73k id, subject, session, run, trial, global trial, time,
isold, iscorrect, rt, changemind, isoldcurrent, iscorrectcurrent, total1, total2, button,
shared1000; -1 for NaN). From the NSD download (``--nsd-dir``): ``nsd_expdesign.mat`` and
``nsdgeneral.nii.gz`` (required), ``streams.nii.gz`` and ``responses.tsv`` (used when present).
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from jobs.data.behavior import TrialRecords, base_behavior, behavior_table, memory_counts
from jobs.data.betas import check_nan, zscore_session
from jobs.data.expdesign import ExpDesign, read_expdesign
from jobs.data.image_store import write_pending_images
from jobs.data.inputs import reason, require_file
from jobs.data.layout import (
    N_SLOTS,
    SLOTS_PER_RUN,
    STREAM_ROIS,
    TRIALS_PER_SESSION,
    SubjectMeta,
    SubjectWriter,
    subject_path,
)
from jobs.data.memory import memory_index_from_design
from jobs.data.progress import Reporter
from jobs.data.responses import read_responses
from jobs.data.resume import RECIPE_ATTR, recipe, subject_done
from jobs.data.rois import random_rois
from jobs.data.splits import split_trials
from memq.job import UserError

PREDICT_SESSIONS = 3
BEHAV_WIDTH = 17
IMAGE, SESSION, RUN, TRIAL, GLOBAL_TRIAL, DAY = 0, 2, 3, 4, 5, 6
_MISSING_IS_MINUS_ONE = {  # TrialRecords field: behav column
    "is_correct": 8,
    "rt": 9,
    "change_mind": 10,
    "is_old_current": 11,
    "is_correct_current": 12,
    "total1": 13,
    "total2": 14,
    "button": 15,
}
SLOT_SECONDS = 4.0
RUN_SECONDS = (SLOTS_PER_RUN + 15) * SLOT_SECONDS  # a 5-minute run plus about a minute's break
LIMITS = """\
What the MindEye2 release cannot give, and what is used instead:
- TIME is stored as whole days: within-day timing (behaviour columns 11-14, time since earlier
  showings) comes from NSD's responses.tsv if --nsd-dir has it, else it is estimated as the day
  plus the trial's slot time in its run (4 s slots, runs 6 minutes apart, from nsd_expdesign.mat).
- Memory windows: past/future_behav span +-15 stimulus trials of a session without blanks; the 33
  time-locked slots within the run are rebuilt from nsd_expdesign.mat.
- MEMORYRECENT/MEMORYFIRST are recomputed from the global trials of all showings in the release.
- Voxels are nsdgeneral voxels in func1pt8mm volume space, not fsaverage: there are no Algonauts
  challenge vertices, no noise-ceiling additions (ROI R is empty, no ncsnr) and no challenge
  images. Coordinates are the voxels' (i, j, k) indices.
- Stream ROIs come from NSD's func1pt8mm streams.nii.gz when present (label 0, nsdgeneral voxels
  outside every stream, is stored as RSC to keep atlas A's names); otherwise there are none.
- The betas' normalisation is redone: NaN -> 0, z-scored per session and voxel. The last 3
  sessions form the predict split and, as for NSD, their betas are not stored."""


@dataclass(frozen=True)
class MindEye2Sources:
    src: Path
    nsd_dir: Path
    subject: str

    @property
    def betas(self) -> Path:
        return self.src / f"betas_all_{self.subject}_fp32_renorm.hdf5"

    @property
    def images(self) -> Path:
        return self.src / "coco_images_224_float16.hdf5"

    def shards(self) -> list[Path]:
        wds = self.src / "wds" / self.subject
        tars = sorted((wds / "train").glob("*.tar")) + sorted((wds / "new_test").glob("*.tar"))
        if not tars:
            raise UserError("no webdataset shards", where=str(wds), hint="expected train/*.tar and new_test/*.tar")
        return tars

    def roi(self, name: str) -> Path:
        return self.nsd_dir / f"nsddata/ppdata/{self.subject}/func1pt8mm/roi/{name}.nii.gz"

    @property
    def responses(self) -> Path:
        return self.nsd_dir / f"nsddata/ppdata/{self.subject}/behav/responses.tsv"

    @property
    def expdesign(self) -> Path:
        return self.nsd_dir / "nsddata/experiments/nsd/nsd_expdesign.mat"

    def recipe(self) -> str:
        return recipe({"source": "mindeye2", "subject": self.subject})


def available_subjects(src: Path) -> list[str]:
    return sorted(
        p.name.removeprefix("betas_all_").removesuffix("_fp32_renorm.hdf5")
        for p in src.glob("betas_all_subj*_fp32_renorm.hdf5")
    )


def read_behav(shards: list[Path]) -> np.ndarray:
    """float64 [n_trials, 17]: every sample's ``behav.npy`` row, sorted by global trial and checked."""
    rows = []
    for shard in shards:
        try:
            with tarfile.open(shard, "r:") as tar:  # webdataset shards are plain tar
                for member in tar:
                    if member.isfile() and Path(member.name).name.split(".", 1)[-1] == "behav.npy":
                        data = tar.extractfile(member)
                        behav = np.load(io.BytesIO(data.read()), allow_pickle=False) if data else None
                        if behav is None or behav.shape != (1, BEHAV_WIDTH):
                            got = "nothing" if behav is None else list(behav.shape)
                            raise UserError(f"{member.name} is {got}, expected [1, {BEHAV_WIDTH}]", where=str(shard))
                        rows.append(behav[0])
        except (tarfile.TarError, ValueError, OSError) as exc:
            raise UserError(f"not a readable webdataset shard ({reason(exc)})", where=str(shard)) from exc
    behav = np.array(rows, dtype=np.float64).reshape(-1, BEHAV_WIDTH)
    behav = behav[np.argsort(behav[:, GLOBAL_TRIAL], kind="stable")]
    n = behav.shape[0]
    where = str(shards[0].parent.parent)
    if n == 0 or n % TRIALS_PER_SESSION or not np.array_equal(behav[:, GLOBAL_TRIAL], np.arange(n)):
        raise UserError(f"the shards hold {n} samples; expected global trials 0..750*N-1, each once", where=where)
    if not np.array_equal(behav[:, SESSION], np.arange(n) // TRIALS_PER_SESSION + 1):
        raise UserError("SESSION (column 2) does not match the global trial (column 5)", where=where)
    return behav


def _within_day(design: ExpDesign, n_sessions: int) -> np.ndarray:
    """Estimated days since the session's start of each trial: run and slot from the design."""
    _, run, slot = np.nonzero(design.stimpattern[:n_sessions])
    return (run * RUN_SECONDS + slot * SLOT_SECONDS) / 86400


def _records(
    srcs: MindEye2Sources, behav: np.ndarray, design: ExpDesign, reporter: Reporter
) -> tuple[TrialRecords, str]:
    n_sessions = behav.shape[0] // TRIALS_PER_SESSION
    missing = {f: np.where(behav[:, c] == -1, np.nan, behav[:, c]) for f, c in _MISSING_IS_MINUS_ONE.items()}
    missing["rt"] = np.where(missing["rt"] > 0, missing["rt"], np.nan)  # 0 also means "no response"
    recent, first = memory_counts(behav[:, IMAGE].astype(np.int64))
    if srcs.responses.is_file():
        responses = read_responses(srcs.responses)
        if not np.array_equal(responses.images, behav[:, IMAGE]):
            raise UserError("73KID differs from the MindEye2 behaviour (column 0)", where=str(srcs.responses))
        time, time_source = responses.records.time, "responses.tsv"
    else:
        time, time_source = behav[:, DAY] + _within_day(design, n_sessions), "estimated from day + slot time"
    reporter.note(f"{srcs.subject}: TIME {time_source}")
    records = TrialRecords(
        session=behav[:, SESSION],
        run=behav[:, RUN],
        trial=behav[:, TRIAL],
        time=time,
        memory_recent=recent,
        memory_first=first,
        **missing,
    )
    return records, time_source


def _volume(path: Path, what: str) -> np.ndarray:
    import nibabel

    require_file(path, what, hint="nsddata/ppdata/subjXX/func1pt8mm/roi/ of the NSD download")
    try:
        return np.asanyarray(nibabel.load(path).dataobj)
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise UserError(f"not a readable NIfTI volume ({reason(exc)})", where=str(path)) from exc


def _voxels(srcs: MindEye2Sources, n_voxels: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """voxel_indices (flat C-order mask index), coords (i, j, k) and stream ROIs (if any) of nsdgeneral."""
    mask = _volume(srcs.roi("nsdgeneral"), "nsdgeneral mask") == 1
    if mask.ndim != 3 or mask.sum() != n_voxels:
        raise UserError(
            f"{int(mask.sum())} nsdgeneral voxels, but the betas have {n_voxels}", where=str(srcs.roi("nsdgeneral"))
        )
    coords = np.argwhere(mask).astype(np.float32)
    rois: dict[str, np.ndarray] = {}
    if srcs.roi("streams").is_file():
        streams = _volume(srcs.roi("streams"), "streams ROI volume")
        if streams.shape != mask.shape:
            what = f"volume is {list(streams.shape)}, nsdgeneral {list(mask.shape)}"
            raise UserError(what, where=str(srcs.roi("streams")))
        label = np.clip(np.rint(streams[mask]).astype(np.int64), 0, None)
        rois = {name: np.flatnonzero(label == k) for k, name in enumerate(STREAM_ROIS[:-1])}
        rois[STREAM_ROIS[-1]] = np.empty(0, dtype=np.int64)
    return np.flatnonzero(mask.ravel()), coords, rois


def _trials(srcs: MindEye2Sources, reporter: Reporter) -> tuple[np.ndarray, np.ndarray, int, str]:
    """memory_index, behaviour table, training sessions and the source of TIME of the subject's trials."""
    design = read_expdesign(srcs.expdesign)
    behav = read_behav(srcs.shards())
    where = str(srcs.src / "wds" / srcs.subject)
    n_sessions = behav.shape[0] // TRIALS_PER_SESSION
    n_designed = design.stimpattern.shape[0]
    if not PREDICT_SESSIONS < n_sessions <= n_designed:
        raise UserError(f"{n_sessions} sessions; need {PREDICT_SESSIONS + 1} to {n_designed}", where=where)
    memory_index = memory_index_from_design(design.slots(srcs.subject)[:n_sessions])
    if not np.array_equal(memory_index[:, N_SLOTS - 1], behav[:, IMAGE]):
        raise UserError(f"the images (column 0) differ from what nsd_expdesign.mat shows {srcs.subject}", where=where)
    records, time_source = _records(srcs, behav, design, reporter)
    behavior = behavior_table(base_behavior(records), design.trial_images(srcs.subject))
    return memory_index, behavior, n_sessions - PREDICT_SESSIONS, time_source


def _betas(f: h5py.File, path: Path, n_rows: int) -> h5py.Dataset:
    betas = f.get("betas")
    if not isinstance(betas, h5py.Dataset) or betas.ndim != 2 or betas.shape[0] < n_rows:
        got = list(betas.shape) if isinstance(betas, h5py.Dataset) else "missing"
        raise UserError(f"dataset 'betas' is {got}, expected [>= {n_rows} trials, voxels]", where=str(path))
    return betas


def import_subject(
    srcs: MindEye2Sources, out_dir: Path, *, force: bool = False, reporter: Reporter | None = None
) -> bool:
    """Write ``out_dir/subjXX.h5`` from the release; False if a complete one is there."""
    reporter = reporter or Reporter()
    path = subject_path(out_dir, srcs.subject)
    if not force and subject_done(path, srcs.recipe()):
        reporter.note(f"{srcs.subject}: {path} is complete, skipped (--force rebuilds it)")
        return False
    require_file(srcs.betas, "MindEye2 betas")
    memory_index, behavior, n_train, time_source = _trials(srcs, reporter)
    n_rows = TRIALS_PER_SESSION * n_train
    with h5py.File(srcs.betas, "r") as f:
        betas = _betas(f, srcs.betas, n_rows)
        voxel_indices, coords, rois = _voxels(srcs, betas.shape[1])
        meta = SubjectMeta(
            subject=srcs.subject,
            space="func1pt8mm",
            behavior=behavior,
            memory_index=memory_index,
            splits=split_trials(memory_index[:, N_SLOTS - 1], n_train),
            coords=coords,
            voxel_indices=voxel_indices,
            rois=rois | random_rois(voxel_indices.size),
            n_beta_trials=n_rows,
            attrs={RECIPE_ATTR: srcs.recipe(), "source": "mindeye2", "time_source": time_source},
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        with (
            reporter.task(f"{srcs.subject} betas (sessions)", n_train) as advance,
            SubjectWriter(path, meta) as writer,
        ):
            for start in range(0, n_rows, TRIALS_PER_SESSION):
                block = betas[start : start + TRIALS_PER_SESSION]
                check_nan(block, srcs.betas)
                writer.append_betas(zscore_session(block))
                advance(1)
    reporter.note(
        f"{srcs.subject}: {memory_index.shape[0] // TRIALS_PER_SESSION} sessions ({PREDICT_SESSIONS} held out), "
        f"{voxel_indices.size} nsdgeneral voxels, stream ROIs {'yes' if rois else 'none'} -> {path}"
    )
    return True


def write_mindeye2_images(src: Path, out_dir: Path, *, force: bool = False, reporter: Reporter | None = None) -> bool:
    """``out_dir/images.h5`` from ``coco_images_224_float16.hdf5`` (float in [0, 1] -> uint8, same size)."""
    path = src / "coco_images_224_float16.hdf5"
    require_file(path, "MindEye2 image file")
    with h5py.File(path, "r") as f:
        images = f.get("images")
        if (
            not isinstance(images, h5py.Dataset)
            or images.ndim != 4
            or images.shape[1] != 3
            or images.shape[2] != images.shape[3]
        ):
            got = list(images.shape) if isinstance(images, h5py.Dataset) else "missing"
            raise UserError(f"dataset 'images' is {got}, expected [73000, 3, 224, 224]", where=str(path))

        def load(ids: np.ndarray) -> np.ndarray:
            if ids[-1] >= images.shape[0]:
                raise UserError(f"image {ids[-1]} is past the {images.shape[0]} stored", where=str(path))
            return np.clip(np.rint(images[ids].astype(np.float32) * 255), 0, 255).astype(np.uint8)

        return write_pending_images(out_dir, images.shape[2], load, force=force, reporter=reporter)
