"""Short jobs through real workers (issue 20): no-op command jobs per second with `memq worker`s on
local SQLite.

    python bench/short_jobs.py                                   # 2000 `true` jobs, 4 workers x 2 slots
    python bench/short_jobs.py --jobs 3000 --slots 2 4 --before 5b7ee55 --before-jobs 400  # issue 20's A/B

N command jobs (`true`) are submitted once W workers (`memq worker --gpus none --slots K
--idle-exit 2`) have registered and wait; throughput = N / (last recorded end - first claim), both
read from the attempts table after the workers exited, so every cost - claiming, starting, the
supervisor, recording - is inside the window. CPU ms per job: the CPU time of the workers and all
they started (supervisors, jobs: reaped children), less that of the same workers given no job
(start-up, idle exit), over N.
``--before REV`` runs the same bench, in the same run, with workers from REV's tree (`git archive`
into a temporary folder, put first on PYTHONPATH), for a before/after pair on one machine state.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path

from _common import REPO, Cleanup, load1, local_dir, machine_line, table


def tree_of(rev: str, cleanup: Cleanup, tmp: str | None) -> Path:
    """REV's files, exported to a temporary folder (the checkout is left alone)."""
    folder = local_dir(tmp, f"bench-short-{rev.replace('/', '_')}-", cleanup)
    data = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(code: Path, n: int, workers: int, slots: int, cleanup: Cleanup, tmp: str | None) -> dict[str, float]:
    """One measurement: N no-op jobs through ``workers`` workers run from the tree ``code``."""
    import sqlalchemy as sa

    from memq.options import RootOptions
    from memq.root import open_store
    from memq.spec import GridSpec, GroupSpec, JobSpec
    from memq.store import schema

    folder = local_dir(tmp, "bench-short-", cleanup)
    root = folder / "root"
    store = open_store(RootOptions(root=str(root), db_mode="local"), create=True)
    cleanup.add(store.backend.dispose)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]),
           "MEMQ_SCRATCH": str(folder / "scratch")}
    cpu0 = children_cpu()
    procs = []
    for i in range(workers):
        log = (folder / f"worker.{i}.log").open("wb")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "memq", "--root", str(root), "--db-mode", "local", "worker", "--name", f"w{i}",
             "--gpus", "none", "--slots", str(slots), "--poll", "0.2", "--idle-exit", "2"],
            cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    try:
        deadline = time.monotonic() + 120
        while sum(w["state"] == "active" for w in store.workers()) < workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"workers did not start: {(folder / 'worker.0.log').read_text()[-600:]}")
            time.sleep(0.1)
        if n:
            jobs = tuple(JobSpec("short", "g", "command", {"i": i}, command=["true"]) for i in range(n))
            store.submit(GridSpec("short", (GroupSpec("g"),), jobs))
        load = load1()
        codes = [p.wait(timeout=max(600, n)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    cpu = children_cpu() - cpu0
    if not n:
        return {"cpu": cpu}
    with store.backend.engine.connect() as conn:
        first, last, done = conn.execute(sa.select(
            sa.func.min(schema.attempts.c.started_at), sa.func.max(schema.attempts.c.ended_at),
            sa.func.count().filter(schema.attempts.c.outcome == "succeeded"))).one()
    if done != n or codes != [0] * workers:
        raise RuntimeError(f"{done} of {n} jobs succeeded, worker exit codes {codes}")
    return {"rate": n / (last - first), "span": last - first, "cpu": cpu, "load": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--slots", type=int, nargs="+", default=[2], help="CPU slots per worker (one run each)")
    ap.add_argument("--before", help="also run the workers of this git revision (e.g. main); it must read this "
                    "tree's schema (5 since 3074399): the roots are made by this tree")
    ap.add_argument("--before-jobs", type=int, help="jobs for the --before runs (default: --jobs)")
    ap.add_argument("--tmp", help="where the roots go (default: $TMPDIR)")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    cleanup = Cleanup()
    try:
        sides = [("this tree", REPO, args.jobs)]
        if args.before:
            sides.insert(0, (args.before, tree_of(args.before, cleanup, args.tmp), args.before_jobs or args.jobs))
        rows = []
        for slots in args.slots:
            for name, code, n in sides:
                idle = run(code, 0, args.workers, slots, cleanup, args.tmp)["cpu"]
                got = run(code, n, args.workers, slots, cleanup, args.tmp)
                print(f"  {name}: {args.workers} workers x {slots} slots: {got['rate']:.0f} jobs/s", flush=True)
                rows.append([name, args.workers, slots, n, f"{got['span']:.2f}", f"{got['rate']:.0f}",
                             f"{1000 * (got['cpu'] - idle) / n:.2f}", f"{idle:.1f}", f"{got['load']:.2f}"])
        print(table(["workers from", "workers", "slots", "jobs", "span s", "jobs/s", "CPU ms/job", "idle CPU s",
                     "load1"], rows,
                    title="\nno-op command jobs (`true`) through real workers, local SQLite"))
    finally:
        cleanup.run()


if __name__ == "__main__":
    main()
