"""10,000 simulated workers on one PostgreSQL store (issue 20): one process, a few connections.

    python bench/pg_many_workers.py                           # 10,000 workers, 30 s jobs, 2 minutes
    python bench/pg_many_workers.py --minutes 10              # the issue's run
    python bench/pg_many_workers.py --workers 2000 --minutes 0.5 --connections 4

Needs the benchmark server (MEMQ_BENCH_PG, as bench/queue_throughput.py; a fresh database per run).

Every simulated worker is registered in the store and does what `memq worker` does for one slot of
jobs that run ``--job-seconds``: it claims a job (``Store.claim_many``, one job: the claim-ahead
window is shorter than the job), renews its lease every ``--heartbeat`` seconds (``Store.heartbeat``,
lease/6 by default) while the job runs, and when the job ends records it and claims the next in one
transaction. The workers' first claims are spread over one job's run time, so the schedule is at its
steady state from the start: workers / job-seconds claims/s (333/s for 10,000 workers and 30 s) and
workers / heartbeat heartbeats/s. A scheduler hands each due step to one of ``--connections``
threads, each with a store (one connection) of its own; a step that runs late is not skipped.

Reported: claims/s and heartbeats/s done, and due (done + those due before the end that never
ran); the claim path's latency (``claim_many``, finish included) and the heartbeat's,
p50/p90/p99/max; how late steps ran (a schedule that keeps up stays near 0); the longest gap
between a worker's lease renewals (must stay under the lease, or a reaper would declare it dead);
errors, fenced replies and jobs claimed twice.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Cleanup, load1, local_dir, machine_line, percentile, pg_available, pg_database, table


@dataclass
class Sim:
    """A simulated worker: its registration, and the job it runs."""

    ref: object
    job: tuple[int, int] | None = None
    ends: float = 0.0
    renewed: float = 0.0  # when its lease was last renewed (its claim or heartbeat)
    busy: threading.Lock = field(default_factory=threading.Lock)  # one step at a time, as a worker's loop


@dataclass
class Tally:
    claims: int = 0
    beats: int = 0
    claim_ms: list[float] = field(default_factory=list)
    beat_ms: list[float] = field(default_factory=list)
    late_ms: list[float] = field(default_factory=list)
    gap: float = 0.0  # longest time between a worker's lease renewals
    cpu: float = 0.0  # this process's CPU seconds during the schedule (1 per second: bound by one core)
    errors: Counter[str] = field(default_factory=Counter)
    fenced: int = 0
    empty: int = 0  # claims that found no job
    claimed: Counter[int] = field(default_factory=Counter)
    overdue: Counter[str] = field(default_factory=Counter)  # steps due before the end that never ran


class Schedule:
    """Due steps (time, worker, what, job) shared by the connection threads, earliest first (a
    heartbeat names the job whose run it belongs to)."""

    def __init__(self, stop_at: float) -> None:
        self.heap: list[tuple[float, int, str, int]] = []
        self.cond = threading.Condition()
        self.stop_at = stop_at

    def put(self, when: float, worker: int, what: str, job: int = 0) -> None:
        with self.cond:
            heapq.heappush(self.heap, (when, worker, what, job))
            self.cond.notify()

    def take(self) -> tuple[float, int, str, int] | None:
        """The next step once it is due; None when the run is over."""
        with self.cond:
            while True:
                now = time.time()
                if now >= self.stop_at:
                    return None
                if self.heap and self.heap[0][0] <= now:
                    return heapq.heappop(self.heap)
                wait = self.heap[0][0] - now if self.heap else 0.1
                self.cond.wait(min(wait, self.stop_at - now, 0.1))


def run(args: argparse.Namespace, db: str, root: str) -> Tally:
    from memq.options import RootOptions
    from memq.root import open_store
    from memq.spec import GridSpec, GroupSpec, JobSpec
    from memq.store.types import Capacity, Outcome, Running

    lease, beat = args.lease, args.heartbeat or args.lease / 6
    store = open_store(RootOptions(root=root, db=db), create=True)
    n_jobs = int(args.workers * (args.minutes * 60 / args.job_seconds + 2))
    t0 = time.perf_counter()
    store.submit(GridSpec("many", (GroupSpec("g"),),
                          tuple(JobSpec("many", "g", "command", {"i": i}, command=["true"]) for i in range(n_jobs))))
    print(f"  submitted {n_jobs} jobs in {time.perf_counter() - t0:.1f} s", flush=True)
    stores = [store] + [open_store(RootOptions(root=root, db=db), create=False) for _ in range(args.connections - 1)]
    sims: list[Sim] = []
    lock = threading.Lock()
    t0 = time.perf_counter()

    def register(k: int) -> None:
        for i in range(k, args.workers, args.connections):
            ref = stores[k].register_worker(f"sim{i:05d}", "bench", i, "bench", [], 1, lease)
            with lock:
                sims.append(Sim(ref))

    threads = [threading.Thread(target=register, args=(k,)) for k in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"  registered {len(sims)} workers in {time.perf_counter() - t0:.1f} s", flush=True)

    rng = random.Random(1)
    start = time.time() + 1.0
    schedule = Schedule(start + args.minutes * 60)
    for i in range(len(sims)):  # first claims spread over one job's run time: the steady state at once
        schedule.put(start + rng.uniform(0, args.job_seconds), i, "claim")
    tally = Tally()
    capacity = Capacity(slots=1)

    def step(st: object, when: float, i: int, what: str, job: int) -> None:
        sim = sims[i]
        with sim.busy:
            (claim if what == "claim" else renew)(st, when, i, sim, job)

    def claim(st: object, when: float, i: int, sim: Sim, _job: int) -> None:
        began = time.time()
        done = [] if sim.job is None else [Outcome(*sim.job, "succeeded")]
        accepted, got = st.claim_many(sim.ref, capacity, done, 1)  # type: ignore[attr-defined]
        ms = 1000 * (time.time() - began)
        with lock:
            tally.claims += 1
            tally.claim_ms.append(ms)
            tally.late_ms.append(1000 * (began - when))
            tally.fenced += accepted.count(False)
            if sim.job is not None:
                tally.gap = max(tally.gap, began - sim.renewed)
            tally.empty += not got
            if got:
                tally.claimed[got[0].job_id] += 1
        sim.job = None
        if not got:
            schedule.put(time.time() + 1.0, i, "claim")  # an idle worker's poll
            return
        sim.job, sim.renewed = (got[0].job_id, got[0].attempt), time.time()
        sim.ends = when + args.job_seconds * rng.uniform(0.9, 1.1)
        schedule.put(sim.ends, i, "claim")
        if when + beat < sim.ends:
            schedule.put(when + beat, i, "beat", got[0].job_id)

    def renew(st: object, when: float, i: int, sim: Sim, job: int) -> None:
        if sim.job is None or sim.job[0] != job:  # that job has ended
            return
        began = time.time()
        reply = st.heartbeat(sim.ref, [Running(*sim.job)])  # type: ignore[attr-defined]
        ms = 1000 * (time.time() - began)
        with lock:
            tally.beats += 1
            tally.beat_ms.append(ms)
            tally.late_ms.append(1000 * (began - when))
            tally.gap = max(tally.gap, began - sim.renewed)
            tally.fenced += len(reply.fenced) + (not reply.alive)
        sim.renewed = time.time()
        if when + beat < sim.ends:
            schedule.put(when + beat, i, "beat", job)

    def connection(st: object) -> None:
        while (due := schedule.take()) is not None:
            try:
                step(st, *due)
            except Exception as exc:  # counted, and the worker goes on as a real one would
                with lock:
                    tally.errors[f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"] += 1
                schedule.put(time.time() + 1.0, *due[1:])

    threads = [threading.Thread(target=connection, args=(st,)) for st in stores]
    cpu0 = time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tally.cpu = time.process_time() - cpu0
    for st in stores:
        st.backend.dispose()
    tally.overdue.update(what for when, _, what, _ in schedule.heap if when < schedule.stop_at)
    return tally


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=10_000)
    ap.add_argument("--minutes", type=float, default=2.0, help="length of the timed schedule (the issue: 10)")
    ap.add_argument("--job-seconds", type=float, default=30.0, help="each job's run time (+-10%%)")
    ap.add_argument("--lease", type=float, default=60.0, help="the workers' lease (memq worker's default)")
    ap.add_argument("--heartbeat", type=float, default=None, help="seconds between lease renewals (lease/6)")
    ap.add_argument("--connections", type=int, default=32, help="threads, one connection each")
    args = ap.parse_args()
    if not pg_available():
        sys.exit("PostgreSQL not reachable (MEMQ_BENCH_PG; /work/shared/tools/pg-local up DIR PORT)")
    beat = args.heartbeat or args.lease / 6
    print(f"many workers: {machine_line()}")
    print(f"{args.workers} workers, {args.job_seconds:g} s jobs, heartbeat every {beat:g} s (lease {args.lease:g} s), "
          f"{args.connections} connections, {args.minutes:g} min")
    cleanup = Cleanup()
    try:
        load0 = load1()
        tally = run(args, pg_database(cleanup), str(local_dir(None, "bench-many-", cleanup)))
    finally:
        cleanup.run()
    seconds = args.minutes * 60

    def pcts(ms: list[float]) -> list[str]:
        return [f"{percentile(ms, q):.1f}" for q in (50, 90, 99)] + [f"{max(ms, default=float('nan')):.1f}"]

    due = {"claim": tally.claims + tally.overdue["claim"], "beat": tally.beats + tally.overdue["beat"]}
    print(table(["path", "per s", "due per s", "p50 ms", "p90 ms", "p99 ms", "max ms"], [
        ["claim (finish + claim)", f"{tally.claims / seconds:.0f}", f"{due['claim'] / seconds:.0f}",
         *pcts(tally.claim_ms)],
        ["heartbeat", f"{tally.beats / seconds:.0f}", f"{due['beat'] / seconds:.0f}", *pcts(tally.beat_ms)],
        ["lateness of a step", "", "", *pcts(tally.late_ms)]]))
    twice = sum(1 for k in tally.claimed.values() if k > 1)
    print(f"\nlongest gap between a worker's lease renewals: {tally.gap:.1f} s (lease {args.lease:g} s); "
          f"fenced or dead replies: {tally.fenced}; claims that found no job: {tally.empty}; "
          f"jobs claimed twice: {twice}; this process's CPU {tally.cpu / seconds:.2f} s per s (one core: 1); "
          f"load average {load0:.1f} at the start, {load1():.1f} at the end")
    print(f"errors: {sum(tally.errors.values())}" + "".join(f"\n  {v:6d}  {k}" for k, v in tally.errors.most_common(5)))


if __name__ == "__main__":
    main()
