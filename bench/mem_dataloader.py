"""Mem data-loader throughput: the HDF5 layout (jobs.mem.data.MemDataset) versus the reference's
one-file-per-item layout, with a cold and a warm page cache, 0 and 2 DataLoader workers.

Generates (once, reused) a synthetic subject at real NSD shapes with jobs.data.synth.synthesize:
40 sessions (30,000 trials, the last 3 held out, so 27,750 betas rows) x 40,000 voxels float16,
10,000 images of 224 px, 1024-d features; then writes the same data the reference way
(mem-spec 1.3, 1.6): fmri/{g:06d}.npy, feats/{id:05d}.npy, images/{id:05d}.jpeg (quality 95).

Each measurement reads the same ``--samples`` random training trials (random order, batch 32,
collate_by_subject as in MemDataModule) through a fresh dataset and DataLoader:

- cold: every page of both layouts is evicted first (``--cold drop``: sync and
  /proc/sys/vm/drop_caches = 3, the default; ``--cold fadvise``: posix_fadvise(DONTNEED) on every
  file of both layouts); the dataset is then built (its init time is reported separately) and read.
- warm: the same samples again, right after the cold pass, so every page they touch is cached.

    python bench/mem_dataloader.py                      # full size (about 6 GiB under /tmp)
    python bench/mem_dataloader.py --trials 6000 --voxels 10000   # scaled down

Prints a table layout x cache x workers -> samples/s, and per sample the files opened, read
system calls and bytes read from the block device (the last two measured with 0 workers).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _mem_data import SUBJECT, ReferenceDataset, generate_hdf5, write_reference  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from jobs.data.layout import IMAGES_FILE, open_subject, subject_path  # noqa: E402
from jobs.mem.data import MemDataset, collate_by_subject  # noqa: E402


def proc_io() -> dict[str, int]:
    """This process's /proc/self/io counters (syscr: read calls; read_bytes: from the device)."""
    fields = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, value = line.split(":")
        fields[key] = int(value)
    return fields


def all_files(h5_dir: Path, ref: Path) -> list[Path]:
    files = list(h5_dir.glob("*.h5"))
    for sub in ("fmri", "feats", "images"):
        files += (ref / sub).iterdir()
    return [*files, ref / "behavior_data.npy", ref / "image_with_memory.npy"]


def evict(method: str, files: list[Path]) -> str:
    """Drop the page cache; returns what was done."""
    subprocess.run(["sync"], check=True)  # dirty pages are neither dropped nor advised away
    if method == "drop":
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            return "drop_caches"
        except OSError as error:
            print(f"drop_caches refused ({error}); using posix_fadvise(DONTNEED)", flush=True)
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "fadvise"


def resident_mib(paths: list[Path]) -> float:
    """MiB of these files in the page cache (util-linux fincore), or nan without it."""
    try:
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", *map(str, paths)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return float("nan")
    return sum(int(x) for x in out.split()) / 2**20


def build(layout: str, args: argparse.Namespace, h5_dir: Path, ref: Path, train: np.ndarray) -> Any:
    if layout == "hdf5":
        return MemDataset(subject_path(h5_dir, SUBJECT), "train", None, h5_dir / IMAGES_FILE)
    return ReferenceDataset(ref, train, args.ref_images, args.image_size, args.feature_dim)


def read(dataset: Any, order: list[int], batch: int, workers: int) -> tuple[float, int]:
    """Seconds to read ``order`` in batches (worker start-up included) and the sample count."""
    loader = DataLoader(
        dataset,
        batch_size=batch,
        sampler=order,
        num_workers=workers,
        collate_fn=collate_by_subject,
        persistent_workers=False,
    )
    n = 0
    t0 = time.perf_counter()
    for batches in loader:
        n += sum(len(b["index"]) for b in batches.values())
    return time.perf_counter() - t0, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/memq-bench-mem"), help="data folder (reused)")
    parser.add_argument("--trials", type=int, default=30_000, help="trials (whole 750-trial sessions)")
    parser.add_argument("--voxels", type=int, default=40_000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--feature-dim", type=int, default=1024)
    parser.add_argument("--ref-images", choices=["jpeg", "npy"], default="jpeg", help="reference image files")
    parser.add_argument("--samples", type=int, default=1024, help="random training samples per measurement")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--cold", choices=["drop", "fadvise"], default="drop")
    parser.add_argument("--layouts", default="hdf5,reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the main process (workers always use 1, as DataLoader sets); on a busy "
        "2-core machine 2 threads made the per-sample tensor work 6-40x slower",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    h5_dir, ref = args.root / f"h5-{args.voxels}-{args.trials}", args.root / f"ref-{args.voxels}-{args.trials}"
    params = generate_hdf5(h5_dir, args.trials, args.voxels, args.image_size, args.feature_dim)
    write_reference(h5_dir, ref, args.ref_images)
    with open_subject(subject_path(h5_dir, SUBJECT)) as subject:
        train = subject.split("train")
        n_betas = subject.betas.shape[0]
    rng = np.random.default_rng(args.seed)
    order = rng.choice(len(train), min(args.samples, len(train)), replace=False).tolist()
    files = all_files(h5_dir, ref)
    sizes = {
        "hdf5": sum(p.stat().st_size for p in h5_dir.glob("*.h5") if p.name != "synth_truth.h5"),
        "reference": sum(p.stat().st_size for p in files if ref in p.parents),
    }
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"subject: {params['n_sessions']} sessions, {n_betas} betas rows x {args.voxels} voxels float16, "
        f"{len(train)} train trials; {args.image_size} px images, {args.feature_dim}-d features; "
        f"HDF5 {sizes['hdf5'] / 2**30:.2f} GiB, reference {sizes['reference'] / 2**30:.2f} GiB "
        f"({args.ref_images} images); {args.samples} random train samples per row, batch {args.batch}"
    )
    print(f"{os.cpu_count()} CPUs, load average {load}; torch threads {torch.get_num_threads()}", flush=True)

    rows = []
    for layout in args.layouts.split(","):
        if layout == "hdf5":
            layout_files = list(h5_dir.glob("*.h5"))
        else:
            layout_files = [ref / "fmri" / f"{int(train[i]):06d}.npy" for i in order[:200]]
        for workers in [int(w) for w in args.workers.split(",")]:
            how = evict(args.cold, files)
            resident = resident_mib(layout_files)
            for cache in ("cold", "warm"):
                t0 = time.perf_counter()
                dataset = build(layout, args, h5_dir, ref, train)
                init_s = time.perf_counter() - t0
                io0 = proc_io()
                seconds, n = read(dataset, order, args.batch, workers)
                io1 = proc_io()
                row = {
                    "layout": layout,
                    "cache": cache,
                    "workers": workers,
                    "samples_per_s": n / seconds,
                    "init_s": init_s,
                    "seconds": seconds,
                }
                if workers == 0:
                    row["syscr"] = (io1["syscr"] - io0["syscr"]) / n
                    row["disk_kib"] = (io1["read_bytes"] - io0["read_bytes"]) / n / 1024
                    row["opens"] = dataset.opens / n if layout == "reference" else 0.0
                rows.append(row)
                extra = (
                    f" (evicted by {how}; {resident:.1f} MiB of the checked files still cached)"
                    if cache == "cold"
                    else ""
                )
                print(
                    f"  {layout:9s} {cache} workers={workers}: {row['samples_per_s']:7.1f} samples/s "
                    f"({n} in {seconds:.2f} s; init {init_s:.2f} s){extra}",
                    flush=True,
                )

    print()
    head = [
        "layout",
        "cache",
        "workers",
        "samples/s",
        "init s",
        "files opened/sample",
        "read calls/sample",
        "KiB from disk/sample",
    ]
    lines = [head]
    opened = {r["layout"]: r for r in rows if r["workers"] == 0 and r["cache"] == "cold"}
    for r in rows:
        base = opened.get(r["layout"], {})
        opens = f"{base['opens']:.1f}" if r["layout"] == "reference" and base else "0 (2 files per process)"
        syscr = f"{r['syscr']:.1f}" if "syscr" in r else "-"
        disk = f"{r['disk_kib']:.0f}" if "disk_kib" in r else "-"
        lines.append(
            [
                r["layout"],
                r["cache"],
                str(r["workers"]),
                f"{r['samples_per_s']:.1f}",
                f"{r['init_s']:.2f}",
                opens,
                syscr,
                disk,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for k, line in enumerate(lines):
        print(
            "  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        )
        if k == 0:
            print("  ".join("-" * w for w in widths))
    print("read calls and disk bytes: /proc/self/io of the reading process while reading, 0 workers (init excluded)")


if __name__ == "__main__":
    main()
