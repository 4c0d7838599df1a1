"""How late a retry starts (issue 15): from the moment its back-off ends to its next start.

    python bench/retry_latency.py                        # 3 workers x 2 slots, 60 jobs, back-off 3 s
    python bench/retry_latency.py --stall                # and workers SIGSTOPped for 0.2-1.5 s at random

Every third job fails on its first attempt (exit 7) and is retried after `--retry-backoff` seconds.
Jobs run 0.1-1.5 s, except every seventh (unless --no-long), which runs 8-15 s and keeps a slot
busy: failures then arrive while workers are full, and retries fall due once slots are free again.
Real `memq worker` processes on a fresh SQLite root (local mode). For each retry: lateness = start
of attempt 2 - (end of attempt 1 + back-off), both as the store recorded them. Target: a few
seconds at most (one poll period) while a worker has a free slot.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import MEMQ, machine_line, median

from memq.options import RootOptions
from memq.root import open_store
from memq.spec import GridSpec, GroupSpec, JobSpec

JOB = ("import os, sys, time; time.sleep(float(sys.argv[1]));"
       "sys.exit(7 if sys.argv[2] == 'fail' and os.environ['MEMQ_ATTEMPT'] == '1' else 0)")


def run(args: argparse.Namespace, directory: Path) -> list[float]:
    store = open_store(RootOptions(root=str(directory / "root"), db_mode="local"), create=True)
    rng = random.Random(args.seed)
    seconds = [rng.uniform(8, 15) if i % 7 == 6 and args.long else rng.uniform(0.1, 1.5) for i in range(args.jobs)]
    specs = tuple(JobSpec("r", "g", "command", {"i": i}, max_attempts=3,
                          command=[sys.executable, "-c", JOB, f"{s:.2f}", "fail" if i % 3 == 0 else "ok"])
                  for i, s in enumerate(seconds))
    store.submit(GridSpec("r", (GroupSpec("g"),), specs))
    env = {**os.environ, "MEMQ_SCRATCH": str(directory / "scratch")}
    workers = [subprocess.Popen([*MEMQ, "--root", str(directory / "root"), "--db-mode", "local", "worker", "--gpus",
                                 "none", "--name", f"w{i}", "--slots", str(args.slots), "--retry-backoff",
                                 str(args.retry_backoff)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL) for i in range(args.workers)]
    deadline = time.monotonic() + args.timeout
    try:
        while store.counts()["r"]["succeeded"] < args.jobs and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.3, 1.0))
            if args.stall:
                victim = rng.choice(workers)
                os.kill(victim.pid, signal.SIGSTOP)
                time.sleep(rng.uniform(0.2, 1.5))
                os.kill(victim.pid, signal.SIGCONT)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(timeout=60)
    late = []
    for job in store.jobs():
        attempts = store.attempts(job["id"])
        for prev, nxt in itertools.pairwise(attempts):
            if prev["outcome"] == "failed":
                late.append(nxt["started_at"] - (prev["ended_at"] + args.retry_backoff * 2 ** (prev["attempt"] - 1)))
    counts = store.counts()["r"]
    print(f"# jobs {counts}")
    return late


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--retry-backoff", type=float, default=3.0)
    parser.add_argument("--stall", action="store_true", help="SIGSTOP a random worker for 0.2-1.5 s, again and again")
    parser.add_argument("--long", action=argparse.BooleanOptionalAction, default=True,
                        help="every seventh job runs 8-15 s (--no-long: all are short)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    print(f"# {machine_line()}")
    with tempfile.TemporaryDirectory(prefix="memq-bench-retry-") as tmp:
        late = sorted(run(args, Path(tmp)))
    if not late:
        print("no retries ran")
        return
    print(f"retries {len(late)}  late by (s): min {late[0]:.2f}  median {median(late):.2f}  max {late[-1]:.2f}"
          f"  (back-off {args.retry_backoff:g} s, {args.workers} workers x {args.slots} slots"
          f"{', stalls' if args.stall else ''})")


if __name__ == "__main__":
    main()
