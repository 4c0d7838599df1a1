"""Job kind ``mem.predict``: a trained job's soup predicts one split for every subject it models.

Output: ``<root>/predictions/<grid>/<job>/<recipe>/<split>/`` (see jobs/mem/ensemble/artifacts.py): one
float16 file per subject, the trial and voxel index, and the manifest, written last. Idempotent:
a directory whose manifest names the current soup and whose files verify is kept. With ``dark:
NAME`` the directory is then copied to the teacher-prediction store DATASET.DIR/dark/NAME/<split>/
(jobs/mem/dark.py), where a student with LOSS.DARK reads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jobs.mem.build import Built, build
from jobs.mem.dark import publish
from jobs.mem.data import MemDataset
from jobs.mem.ensemble.artifacts import (
    MANIFEST,
    read_manifest,
    remove_temporaries,
    verified,
    write_index,
    write_manifest,
    write_subject_rows,
)
from jobs.mem.ensemble.source import registered, stage_params
from jobs.mem.ensemble.stage_params import PredictParams
from jobs.mem.evaluate import subject_batches
from memq.job import SOUP_ARTIFACT, JobContext, PermanentError, load_verified, prediction_dir, soup_path


def run(ctx: JobContext) -> None:
    params = stage_params(PredictParams, ctx)
    source = ctx.succeeded_job(params.source_job)
    path = soup_path(ctx.root, source["grid"], source["id"], params.recipe)
    soup = registered(ctx, source["id"], SOUP_ARTIFACT, str(path))
    if soup is None:
        raise PermanentError(f"job {source['id']} has no {params.recipe} soup (run its mem.soup job first)")
    directory = prediction_dir(ctx.root, source["grid"], source["id"], params.recipe, params.split)
    manifest = read_manifest(directory)
    if manifest is not None and manifest["soup_sha256"] == soup["sha256"] and verified(directory, manifest):
        print(f"{directory}: up to date", flush=True)
    else:
        _predict(ctx, params, source, soup, directory)
    if params.dark is not None:
        data_dir = source["params"].get("DATASET.DIR")
        if not data_dir:
            raise PermanentError(f"dark: job {source['id']} has no DATASET.DIR to publish teacher predictions in")
        target = publish(directory, data_dir, params.dark, params.split)
        print(f"teacher predictions {params.dark}: {params.split} -> {target}", flush=True)


def _predict(ctx: JobContext, params: PredictParams, source: dict[str, Any], soup: dict[str, Any],
             directory: Path) -> None:
    (directory / MANIFEST).unlink(missing_ok=True)  # the files below are about to change
    remove_temporaries(directory)
    built = build(source["params"], source["repeat"], ctx.gpus, ctx.root)
    built.model.load_trainable_state_dict(load_verified(soup))
    infos = built.data.subject_info()
    entries, index = {}, {}
    for dataset in built.data.datasets(params.split):
        subject = dataset.subject
        shape = (len(dataset), built.model.n_voxels[subject])
        entries[subject] = write_subject_rows(directory, subject, shape, _rows(ctx, built, dataset))
        voxels = infos[subject].voxels
        index[subject] = (dataset.indices, np.arange(infos[subject].n_voxels) if voxels is None else voxels)
    write_manifest(directory, {"source_job": source["id"], "grid": source["grid"], "recipe": params.recipe,
                               "split": params.split, "soup_sha256": soup["sha256"],
                               "index": write_index(directory, index), "subjects": entries})
    print(f"job {source['id']} {params.recipe} soup: {params.split} predictions of {len(entries)} subjects "
          f"-> {directory}", flush=True)


def _rows(ctx: JobContext, built: Built, dataset: MemDataset) -> Iterator[np.ndarray]:
    """The predictions of ``dataset``'s trials in split order, a batch at a time: the train split of a
    real subject (~18 GB of float16) is never held in memory at once."""
    row = 0
    for samples, preds in subject_batches(built, dataset):
        if not np.array_equal(samples["index"].cpu().numpy(), dataset.indices[row : row + len(preds)]):
            raise RuntimeError(f"{dataset.subject}: batches out of split order at row {row}")
        yield preds.cpu().numpy()
        row += len(preds)
        ctx.report_progress(subject=dataset.subject, trials=row)
