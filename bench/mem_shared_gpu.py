"""Aggregate training throughput of Mem jobs sharing one GPU (issue 19): 1, 2, 4 and 8 processes of
bench/mem_train_step.py on the same device, each with its own model, their timed steps started
together (a file barrier after the warm-up), as `resources: {gpus: 0.25}` jobs of one worker would.

    python bench/mem_shared_gpu.py                          # GPU: 16-mixed, 8 subjects, topyneck frozen
    python bench/mem_shared_gpu.py --tiny --jobs 1,2        # CPU smoke check of the code path

Per N: the summed samples/s, each job's samples/s, the largest peak GPU memory of one job, and the
gain over one job alone. The timed windows start together and the sum counts each job at its own
rate over its own window: jobs that finish early stop competing, so read it with the spread
(min-max per job) beside it. A row whose jobs run out of memory says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine_line, table

STEP = Path(__file__).resolve().parent / "mem_train_step.py"


def run_shared(n: int, step_args: list[str], folder: Path) -> list[dict] | str:
    """``n`` bench processes at once; their result rows, or what went wrong."""
    barrier = folder / f"barrier-{n}"
    barrier.mkdir()
    env = {**os.environ, "MEMQ_BENCH_BARRIER": str(barrier), "MEMQ_BENCH_PEERS": str(n)}
    procs = []
    for i in range(n):
        out = folder / f"n{n}-job{i}"
        log = (folder / f"n{n}-job{i}.log").open("w")
        procs.append((subprocess.Popen([sys.executable, str(STEP), *step_args, "--out", str(out)], env=env,
                                       stdout=log, stderr=subprocess.STDOUT), out, log))
    rows, failed = [], []
    for proc, out, log in procs:
        code = proc.wait()
        log.close()
        result = out / "mem_train_step.json"
        if code != 0 or not result.is_file() or not json.loads(result.read_text()):
            failed.append(Path(log.name).read_text().strip().splitlines()[-1:] or [f"exit {code}"])
        else:
            rows.append(json.loads(result.read_text())[0])
    return rows if not failed else f"{len(failed)} of {n} jobs failed: {failed[0][0][:120]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default="1,2,4,8", help="comma list of jobs sharing the device")
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (a smoke check)")
    parser.add_argument("--precision", help="one precision (default 16-mixed on a GPU, 32-true on a CPU)")
    parser.add_argument("--subjects", default="8")
    parser.add_argument("--topyneck", default="frozen")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per job (default 40; tiny 6)")
    args = parser.parse_args()
    steps = args.steps or (6 if args.tiny else 40)
    step_args = [*(["--tiny", "--device", "cpu"] if args.tiny else []), "--subjects", args.subjects,
                 "--topyneck", args.topyneck, "--steps", str(steps),
                 *(["--precision", args.precision] if args.precision else [])]
    print(machine_line())
    lines, alone = [], None
    with tempfile.TemporaryDirectory(prefix="memq-shared-gpu-") as tmp:
        for n in (int(x) for x in args.jobs.split(",")):
            rows = run_shared(n, step_args, Path(tmp))
            if isinstance(rows, str):
                lines.append([n, "-", "-", "-", "-", rows])
                print(f"  {n} jobs: {rows}", flush=True)
                continue
            rates = [r["samples_per_s"] for r in rows]
            total = sum(rates)
            alone = alone or (total if n == 1 else None)
            peak = max((r.get("peak_alloc_gib") or 0.0) for r in rows)
            gain = f"{total / alone:.2f}x" if alone else "-"
            lines.append([n, f"{total:.1f}", f"{min(rates):.1f}-{max(rates):.1f}", f"{peak:.2f}" if peak else "n/a",
                          gain, rows[0]["device"]])
            print(f"  {n} jobs: {total:.1f} samples/s in all", flush=True)
    title = f"jobs sharing one device ({args.subjects} subjects, topyneck {args.topyneck}, {steps} timed steps)"
    print(table(["jobs", "samples/s (sum)", "per job", "peak GiB (one job)", "vs 1 job", "device"], lines,
                title=title))


if __name__ == "__main__":
    main()
