"""The mem.ensemble job on the xvbc grid's 111 models at real shapes: wall time and peak memory, and
how they grow with the number of models.

Set-up (timed, not part of the figures): synthetic prepared data (jobs.data.synth) for
``--subjects`` subjects of ``--voxels`` voxels with ``--predict-sessions`` predict sessions
(750 trials each: 3 -> 2,250 trials, as NSD's held-out sessions) and ``--train-sessions``
sessions with betas (their val2 trials are scored); the 111 jobs of grids/xvbc.yaml submitted to
a fresh root and marked succeeded; and for every job, split (predict, val2) and subject a float16
prediction file covering the job's ROI voxels (the whole brain for `all`), in the layout of
jobs/mem/ensemble/artifacts.py. Values are random: the ensemble's cost does not depend on them.

Then, for the first 4, 6, 9 and 15 schemes of the grid (12, 30, 57 and 111 models), the combine
job runs in a fresh process (jobs.mem.ensemble.combine.run, as a worker runs it: stitch, average, write
the submission and scores.json) and reports its wall time and peak RSS (VmHWM).

    python bench/ensemble.py                                  # 8 subjects x 40,000 voxels (~22 GB of files)
    python bench/ensemble.py --subjects 2 --voxels 4000       # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import machine_line  # noqa: E402
from bench.soup import maxrss_mb  # noqa: E402

GRID_FILE = REPO / "grids" / "xvbc.yaml"
SPLITS = ("predict", "val2")
SCHEME_STEPS = (4, 6, 9, 15)  # all-0..2 + A; + W, R1; + R2..R4; + R5..R10


def open_root(root: Path) -> Any:
    from memq.options import RootOptions
    from memq.root import open_store

    return open_store(RootOptions(root=str(root), db_mode="local"), create=True)


def claim(store: Any, root: Path) -> Any:
    """Claim the next job as a worker on this host would, and its JobContext."""
    from memq.store.types import Capacity
    from memq.testing import claim_context

    worker = store.register_worker(f"bench-{os.getpid()}", socket.gethostname(), os.getpid(), "boot", [], 1, 3600)
    return claim_context(store, worker, Capacity(gpus=1, slots=1), root / "scratch")


def prepare(directory: Path, subjects: int, voxels: int, train: int, predict: int) -> list[dict[str, Any]]:
    """Data, root, succeeded xvbc jobs and their prediction files; returns the job rows."""
    import numpy as np

    from jobs.data.layout import list_subjects, open_subject, subject_path
    from jobs.data.synth import synthesize
    from jobs.mem.data import roi_positions
    from jobs.mem.ensemble.artifacts import write_index, write_manifest, write_subject
    from memq.grid import load_grid
    from memq.job import prediction_dir
    from memq.store.types import Outcome

    t0 = time.perf_counter()
    data = directory / "data"
    synthesize(data, n_subjects=subjects, n_voxels=voxels, n_sessions=train + predict, n_predict_sessions=predict,
               image_size=8, feature_dim=4)
    print(f"# synthetic data: {time.perf_counter() - t0:.0f} s", flush=True)
    root = directory / "root"
    store = open_root(root)
    store.submit(load_grid(GRID_FILE, {"DATASET.DIR": str(data)}))
    for _ in range(len(store.jobs(grid="xvbc"))):
        ctx = claim(store, root)
        store.finish(Outcome(ctx.job_id, ctx.attempt, "succeeded"))
    jobs = store.jobs(grid="xvbc")
    t0 = time.perf_counter()
    rng, written = np.random.default_rng(0), 0
    # (job, split) -> (manifest entries, index) by subject
    parts: dict[tuple[int, str], tuple[dict[str, Any], dict[str, Any]]] = {
        (job["id"], split): ({}, {}) for job in jobs for split in SPLITS}
    for subject in list_subjects(data):
        with open_subject(subject_path(data, subject)) as f:
            trials = {split: f.split(split) for split in SPLITS}
            voxels_of = {job["id"]: roi_positions(f, job["params"].get("DATASET.ROIS")) for job in jobs}
            n_voxels = f.n_voxels
        for split, rows in trials.items():
            values = rng.standard_normal((len(rows), n_voxels), dtype=np.float32).astype(np.float16)
            for job in jobs:
                found = voxels_of[job["id"]]
                voxels = np.arange(n_voxels) if found is None else found
                if voxels.size:
                    entries, index = parts[job["id"], split]
                    directory = prediction_dir(root, "xvbc", job["id"], "uniform", split)
                    entries[subject] = write_subject(directory, subject, values[:, voxels])
                    index[subject] = (rows, voxels)
                    written += entries[subject]["size"]
    for (job_id, split), (entries, index) in parts.items():
        directory = prediction_dir(root, "xvbc", job_id, "uniform", split)
        write_manifest(directory, {"soup_sha256": "bench", "index": write_index(directory, index), "subjects": entries})
    print(f"# prediction files: {written / 2**30:.1f} GiB in {time.perf_counter() - t0:.0f} s", flush=True)
    return jobs


def child(root: Path, ids: list[int], out: Path) -> None:
    """Run one combine job in this (fresh) process; print its figures as JSON."""
    from jobs.mem.ensemble.combine import run
    from memq.spec import GridSpec, GroupSpec, JobSpec
    from memq.store.types import Outcome

    store = open_root(root)
    group = f"combine-{len(ids)}"
    job = JobSpec("bench", group, "mem.ensemble", {"grid": "xvbc", "out": str(out), "jobs": ids}, gpus=0)
    store.submit(GridSpec("bench", (GroupSpec(group),), (job,)))
    ctx = claim(store, root)
    baseline = maxrss_mb()
    start = time.perf_counter()
    run(ctx)
    seconds = time.perf_counter() - start
    store.finish(Outcome(ctx.job_id, ctx.attempt, "succeeded"))
    print(json.dumps({"seconds": seconds, "peak_mb": maxrss_mb(), "baseline_mb": baseline}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--voxels", type=int, default=40_000, help="voxels per subject")
    parser.add_argument("--predict-sessions", type=int, default=3, help="750 trials each")
    parser.add_argument("--train-sessions", type=int, default=3, help="sessions with betas (val2 is ~2%% of them)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/memq-bench-ensemble"))
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--child", nargs=2, metavar=("IDS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.dir / "root", json.loads(args.child[0]), Path(args.child[1]))
        return
    print(f"# bench/ensemble.py: {machine_line()}")
    shutil.rmtree(args.dir, ignore_errors=True)
    try:
        jobs = prepare(args.dir, args.subjects, args.voxels, args.train_sessions, args.predict_sessions)
        from jobs.mem.ensemble.schemes import schemes
        from memq.job import prediction_dir

        found = schemes(jobs, jobs)
        one = 4 * args.voxels * 750 * args.predict_sessions / 2**20
        print(f"# {args.subjects} subjects x {args.voxels:,} voxels, {750 * args.predict_sessions:,} predict trials: "
              f"one float32 whole-brain prediction = {one:.0f} MiB")
        print(f"{'models':>7}{'schemes':>8}{'GiB read':>9}{'wall s':>8}{'MiB/s':>7}{'peak RSS MiB':>13}"
              f"{'baseline MiB':>13}{'peak-baseline':>14}")
        for n_schemes in SCHEME_STEPS:
            ids = [i for name in list(found)[:n_schemes] for i in found[name]]
            size = sum(p.stat().st_size for i in ids for split in SPLITS
                       for p in prediction_dir(args.dir / "root", "xvbc", i, "uniform", split).glob("subj*.npy"))
            out = subprocess.run([sys.executable, __file__, "--dir", str(args.dir), "--child", json.dumps(ids),
                                  str(args.dir / f"out-{len(ids)}")], check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{len(ids):>7}{n_schemes:>8}{size / 2**30:>9.1f}{r['seconds']:>8.1f}"
                  f"{size / 2**20 / r['seconds']:>7.0f}{r['peak_mb']:>13.0f}{r['baseline_mb']:>13.0f}"
                  f"{r['peak_mb'] - r['baseline_mb']:>14.0f}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
