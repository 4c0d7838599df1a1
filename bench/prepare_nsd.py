"""Benchmark of `memq data prepare-nsd`: wall time and peak memory per subject vs sessions.

Writes a fake NSD + Algonauts tree with real shapes (int16 .mgh betas [163842, 1, 1, 750] per
hemisphere and training session, as NSD ships them; real-size masks, ncsnr, spheres and design)
under --dir, then prepares one subject with 4..40 completed sessions (the last 3 held out, so
1..37 sessions of betas are read), each in a fresh `memq` process whose peak RSS (ru_maxrss,
file-backed mapped pages included) comes from wait4. The betas of the largest run take
2 x 246 MB per session on disk (18 GB for 40 sessions).

    python bench/prepare_nsd.py                      # sessions 4,10,20,40
    python bench/prepare_nsd.py --sessions 4,8 --vertices 20000
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.data.nsd_fake import (  # noqa: E402  (the fake tree is a test fixture)
    FSAVERAGE_VERTICES,
    PREDICT_SESSIONS,
    FakeNsd,
    write_fake_nsd,
    write_responses,
)

SUBJECT = "subj01"


def _view(tree: FakeNsd, n_sessions: int, root: Path) -> tuple[Path, Path]:
    """NSD and Algonauts directories of the subject with ``n_sessions`` completed sessions (symlinks)."""
    nsd, alg = root / f"nsd{n_sessions}", root / f"alg{n_sessions}"
    for part in ("nsddata/experiments", "nsddata/freesurfer", "nsddata_betas"):
        (nsd / part).parent.mkdir(parents=True, exist_ok=True)
        (nsd / part).symlink_to(tree.nsd_dir / part)
    columns = {k: v[: 750 * n_sessions] for k, v in tree.subjects[SUBJECT].responses.items()}
    write_responses(nsd / f"nsddata/ppdata/{SUBJECT}/behav/responses.tsv", columns)
    (alg / SUBJECT).mkdir(parents=True)
    (alg / SUBJECT / "roi_masks").symlink_to(tree.alg_dir / SUBJECT / "roi_masks")
    shown = columns["73KID"] - 1
    n_train = 750 * (n_sessions - PREDICT_SESSIONS)
    tests = alg / SUBJECT / "test_split/test_images"
    tests.mkdir(parents=True)
    png = tests.parent / "blank.png"
    from PIL import Image

    Image.new("RGB", (1, 1)).save(png)
    for k, image_id in enumerate(np.setdiff1d(shown[n_train:], shown[:n_train]), start=1):
        (tests / f"test-{k:04d}_nsd-{image_id:05d}.png").symlink_to(png)
    return nsd, alg


def _run(nsd: Path, alg: Path, out: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one `memq data prepare-nsd` process."""
    memq = Path(sys.executable).parent / "memq"
    args = [memq, "data", "prepare-nsd", "--nsd-dir", nsd, "--alg-dir", alg, "--out", out, "--no-images", "--force"]
    start = time.perf_counter()
    child = subprocess.Popen([str(a) for a in args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if status:
        raise SystemExit(f"prepare-nsd failed: {child.stderr.read().decode() if child.stderr else status}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", default="4,10,20,40", help="completed-session counts to time")
    parser.add_argument("--vertices", type=int, default=FSAVERAGE_VERTICES, help="vertices per hemisphere")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()
    counts = sorted(int(s) for s in args.sessions.split(","))
    root = Path(tempfile.mkdtemp(prefix="bench_prepare_nsd_", dir=args.dir))
    try:
        start = time.perf_counter()
        tree = write_fake_nsd(root / "tree", {SUBJECT: counts[-1]}, n_vertices=args.vertices,
                              challenge_fraction=0.12, images=False, outside_snr_power=16)  # fmt: skip
        print(f"inputs: {counts[-1]} sessions x 750 trials x {2 * args.vertices} vertices (int16 .mgh) "
              f"written in {time.perf_counter() - start:.0f} s under {root}")  # fmt: skip
        print(f"{'sessions':>8} {'w/ betas':>8} {'betas read':>10} {'voxels':>7} {'wall s':>7} {'s/session':>9} "
              f"{'peak RSS':>9} {'output':>8}")  # fmt: skip
        for n in counts:
            nsd, alg = _view(tree, n, root)
            out = root / f"out{n}"
            wall, rss = _run(nsd, alg, out)
            n_train = n - PREDICT_SESSIONS
            read_gb = n_train * 2 * args.vertices * 750 * 2 / 1e9
            with h5py.File(out / f"{SUBJECT}.h5") as f:
                n_voxels = f.attrs["n_voxels"]
            size = (out / f"{SUBJECT}.h5").stat().st_size / 2**20
            print(f"{n:>8} {n_train:>8} {read_gb:>8.1f}GB {n_voxels:>7} {wall:>7.1f} {wall / n_train:>9.2f} "
                  f"{rss:>7.0f}MB {size:>6.0f}MB", flush=True)  # fmt: skip
            shutil.rmtree(out)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
