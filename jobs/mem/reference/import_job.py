"""Job kind ``mem.import``: a reference run's checkpoints become this job's registered checkpoints.

Params: the Mem settings the reference run used, as for ``mem.train`` (``DATASET.DIR``,
``DATASET.ROIS``, the backbones' ``WEIGHTS``, ``MODEL.TOPYNECK_PATH``...), plus ``checkpoints``:
the run's files (the Lightning ``*.ckpt`` of its top 10, or saved state dicts such as
``soup.pth``) or glob patterns, where ``{rois}`` and ``{repeat}`` stand for the job's ROIs and
repeat index, so that one group (one atlas) imports one run per ROI model; and optionally
``sha256sums``: a ``sha256sum`` listing that must hold every file, checked before it is read.

Each file is read without running anything in it (jobs/mem/reference/read.py), converted and
checked against this job's model and data (jobs/mem/reference/convert.py), scored on val1 (full pass) and
written as ``mem.train`` writes its top k: trainable tensors on the node-local scratch, registered
with size, sha256 and the val1 r. ``mem.soup``, ``mem.predict`` and ``memq ensemble`` then take
the job as they take a trained one. Any file that does not fit fails the job at once (no retries).
"""

from __future__ import annotations

import glob
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jobs.data.layout import open_subject, subject_path
from jobs.mem.build import build, job_config
from jobs.mem.ensemble.source import stage_params
from jobs.mem.ensemble.stage_params import ImportParams
from jobs.mem.evaluate import mean_pearson
from jobs.mem.files import save_atomically
from jobs.mem.reference.convert import ReferenceVoxels, convert
from jobs.mem.reference.read import read_reference
from jobs.mem.subject import SubjectInfo
from memq.job import JobContext, PermanentError, sha256_file


def reference_voxels(data_dir: str, infos: Mapping[str, SubjectInfo], rois: list[str] | None,
                     ) -> dict[str, ReferenceVoxels]:
    """Each subject's voxels as the reference's dataset lists them: its ROI files concatenated."""
    voxels = {}
    for subject, info in infos.items():
        positions = None
        if rois is not None:
            with open_subject(subject_path(data_dir, subject)) as file:
                positions = np.concatenate([file.roi(name) for name in rois])
        voxels[subject] = ReferenceVoxels(info.coords, positions)
    return voxels


def checkpoint_files(patterns: Sequence[str], rois: Sequence[str] | None, repeat: int) -> list[Path]:
    """The files ``patterns`` name for a job of these ROIs and repeat, each pattern's sorted."""
    files = []
    for pattern in patterns:
        name = pattern.format(rois="+".join(rois) if rois else "all", repeat=repeat)
        found = sorted(glob.glob(name)) if glob.has_magic(name) else [name] if Path(name).is_file() else []
        if not found:
            raise PermanentError(f"checkpoints: no file {name}")
        files += [Path(f).absolute() for f in found]
    return files


def read_sums(path: str) -> dict[Path, str]:
    """A ``sha256sum`` listing: absolute path -> checksum (relative names are relative to the file)."""
    listing = Path(path)
    if not listing.is_file():
        raise PermanentError(f"sha256sums: no file {path}")
    sums = {}
    for number, line in enumerate(listing.read_text().splitlines(), 1):
        digest, _, name = line.partition(" ")
        if len(digest) != 64 or not name:
            raise PermanentError(f"{path}:{number}: not a sha256sum line")
        sums[(listing.parent / name.lstrip(" *")).absolute()] = digest.lower()
    return sums


def run(ctx: JobContext) -> None:
    params = stage_params(ImportParams, ctx)
    files = checkpoint_files(params.checkpoints, job_config(ctx.params).DATASET.ROIS, ctx.repeat)
    sums = read_sums(params.sha256sums) if params.sha256sums else None
    built = build(ctx.params, ctx.repeat, ctx.gpus, ctx.root)
    dataset = built.config.DATASET
    assert dataset.DIR is not None  # build checked it
    voxels = reference_voxels(dataset.DIR, built.data.subject_info(), dataset.ROIS)
    for row in ctx.checkpoints():  # of an earlier attempt
        ctx.unregister_checkpoint(row["path"])
    scores = []
    for i, source in enumerate(files):
        digest = sha256_file(source)
        if sums is not None and sums.get(source) != digest:
            expected = sums.get(source, "no line in " + str(params.sha256sums))
            raise PermanentError(f"{source}: sha256 {digest}, expected {expected}")
        try:
            reference = read_reference(source)
            converted = convert(reference.tensors, built.model, voxels)
        except ValueError as error:  # ConversionError included: retrying cannot help
            raise PermanentError(f"{source}: {error}") from None
        built.model.load_trainable_state_dict(converted.state)
        score = mean_pearson(built, "val1")
        path = save_atomically(converted.state, ctx.scratch_dir / "checkpoints" / f"reference-{i:03d}.pt")
        ctx.register_checkpoint(path, metric=score, step=i)
        scores.append(score)
        ignored = f"; ignored {', '.join(reference.ignored)}" if reference.ignored else ""
        print(f"{source} (sha256 {digest}): val1 r {score:.4f}, {converted.checked} frozen tensors checked, "
              f"{converted.unchecked} not in the file{ignored} -> {path}", flush=True)
    ctx.record_metrics(val_pearson=max(scores), checkpoints=len(scores))
