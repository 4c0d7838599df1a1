"""Soup of N checkpoints of the full Mem model: jobs.mem.ensemble.soup_recipes (streaming) against loading all N
at once.

Builds the model once from the jobs.mem.config defaults (random init, CPU) for ``--subjects``
subjects of ``--voxels`` voxels, and writes N checkpoints of its trainable state dict (random
values, float32, as mem.train saves them) into ``--dir``. Each method then runs in a fresh
process that reports its wall time and peak RSS (VmHWM: ru_maxrss would carry the parent's peak
over fork and exec); the baseline is that peak after the process's imports:

    naive            torch.load all N, then the element-wise mean (what the reference's xvda did)
    uniform          jobs.mem.ensemble.soup_recipes.uniform: one checkpoint at a time, sha256 verified before each load
    uniform-noverify jobs.mem.ensemble.soup_recipes.uniform with a plain torch.load (the cost of the checksums)
    greedy           jobs.mem.ensemble.soup_recipes.greedy with a trivial evaluate (soup + one checkpoint in memory;
                     model evaluation, the real cost of a greedy soup, is not included)

    python bench/soup.py                         # 10 checkpoints, 8 subjects x 40,000 voxels
    python bench/soup.py --voxels 4000 --n 4     # a quick run

Files are read from the page cache when they fit (they were just written); the table says how
much of them is on disk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import machine_line  # noqa: E402

METHODS = ("naive", "uniform", "uniform-noverify", "greedy")
ROWS_FILE = "rows.json"


def maxrss_mb() -> float:
    """Peak resident memory of this process image (VmHWM, reset by exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def generate(directory: Path, n: int, subjects: int, voxels: int) -> list[dict[str, Any]]:
    """N checkpoint files of the full model's trainable state dict; their registry rows."""
    import numpy as np
    import torch

    from jobs.mem.config import RANDOM_BACKBONES, load_config
    from jobs.mem.model import MemModel
    from jobs.mem.subject import SubjectInfo
    from memq.checkpoints import sha256_file

    rng = np.random.default_rng(0)
    infos = {f"subj{i + 1:02d}": SubjectInfo(rng.uniform(-50, 50, (voxels, 3)).astype(np.float32))
             for i in range(subjects)}
    shapes = {k: v.shape for k, v in MemModel(load_config(RANDOM_BACKBONES), infos).trainable_state_dict().items()}
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        gen = torch.Generator().manual_seed(i)
        path = directory / f"epoch-{i:04d}.pt"
        torch.save({k: torch.randn(shape, generator=gen) for k, shape in shapes.items()}, path)
        rows.append({"id": i + 1, "path": str(path), "synced_path": None, "size": path.stat().st_size,
                     "sha256": sha256_file(path), "metric": 0.5 - 0.01 * i})
        print(f"  wrote {path.name} ({path.stat().st_size / 2**20:.0f} MiB)", file=sys.stderr, flush=True)
    (directory / ROWS_FILE).write_text(json.dumps(rows))
    return rows


def child(method: str, directory: Path) -> None:
    """Run one method in this (fresh) process and print its figures as JSON."""
    import torch

    from jobs.mem.ensemble import soup_recipes as soup

    rows = json.loads((directory / ROWS_FILE).read_text())
    baseline = maxrss_mb()
    start = time.perf_counter()
    if method == "naive":
        states = [torch.load(row["path"], weights_only=True) for row in rows]
        result = {k: torch.stack([s[k] for s in states]).mean(0) for k in states[0]}
    elif method == "uniform":
        result = soup.uniform(rows)
    elif method == "uniform-noverify":
        result = soup.uniform(rows, load=lambda row: torch.load(row["path"], weights_only=True))
    else:
        result = soup.greedy(rows, lambda state: (float(next(iter(state.values())).sum()), 0.0)).state
    seconds = time.perf_counter() - start
    params = sum(v.numel() for v in result.values())
    print(json.dumps({"method": method, "seconds": seconds, "peak_mb": maxrss_mb(), "baseline_mb": baseline,
                      "params": params}))


def run(method: str, directory: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", method, "--dir", str(directory)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10, help="checkpoints (default 10: mem.train's top-10)")
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--voxels", type=int, default=40_000, help="voxels per subject")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/memq-bench-soup"))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint files")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dir)
        return
    print(f"# bench/soup.py: {machine_line()}")
    start = time.perf_counter()
    rows = generate(args.dir, args.n, args.subjects, args.voxels)
    size = rows[0]["size"] / 2**20
    print(f"# {args.n} checkpoints of {size:.0f} MiB ({args.subjects} subjects x {args.voxels:,} voxels), "
          f"written in {time.perf_counter() - start:.0f} s to {args.dir}")
    try:
        print(f"{'method':<18}{'wall s':>8}{'peak RSS MiB':>14}{'baseline MiB':>14}{'soup MiB':>10}{'ckpts held':>12}")
        for method in args.methods:
            r = run(method, args.dir)
            held = (r["peak_mb"] - r["baseline_mb"]) / size
            print(f"{method:<18}{r['seconds']:>8.1f}{r['peak_mb']:>14.0f}{r['baseline_mb']:>14.0f}"
                  f"{r['params'] * 4 / 2**20:>10.0f}{held:>12.1f}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
