"""Worker latency and idle cost (issue 3), with real `memq worker` processes.

    python bench/worker_latency.py                          # parts a-d, local + shared + postgres
    python bench/worker_latency.py --parts a --backends local --latency-jobs 40
    python bench/worker_latency.py --parts d --many 64 --window 120

a  submit -> start: K idle workers (`memq worker --poll 1`) wait; jobs are submitted one at a time at
   random moments; each job (`sh -c 'date +%s.%N > FILE'`) writes when it started. Latency = that time
   minus the moment `Store.submit` returned. Target: median < 1 s with a 1 s poll.
b  idle transactions: N idle workers, nothing changes, for --window seconds after --settle seconds.
   Counted three ways: every store transaction of each worker (bench/_counting_worker.py wraps
   Backend.run before the CLI starts; memq is not modified), PostgreSQL's xact_commit+xact_rollback
   of the worker database (pg_stat_database, read from another database) next to the same count of
   a control database with the same schema and no client (the server's autovacuum launcher visits
   every database, about 2 transactions a minute, clients or not, so these two differ by its
   timing), PostgreSQL's own count of the rows memq's tables gave out or took (pg_stat_user_tables:
   scans, inserts, updates, deletes; autovacuum counts none of them), and on shared-mode SQLite the
   lock acquisitions seen by `strace -f -e trace=symlink` (one per transaction). Target: 0. (An idle
   backend hands its counts to the server up to ~10 s late: transactions at the window's end can be
   missing from the pg columns.)
   --busy K: K of the N workers run a long job (`sleep`) through the window, the others idle: what
   watching a busy worker costs (each idle worker reads the heartbeats every lease/4).
   --wakes K: the version file is bumped K times in the window (evenly, no transaction): what one
   wake-up with nothing to claim costs each idle worker (as after a drain request or a resubmit).
c  GPU idle gap: one worker with one GPU (`--gpus 0`: an explicit list is trusted without NVML; on a GPU
   node `--gpu-spec auto` adds NVML discovery and the per-claim health check), or with one CPU slot; a
   chain of short jobs (`sleep 0.3`) that write their start and end times; gap = start(next) -
   end(prev). Target: < 0.5 s beyond the job's own start-up (here `sh` + `date`, a few ms).
d  many idle workers on one SQLite root (local mode): transactions per second while nothing changes,
   and memory per worker process. Target: ~0.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    MEMQ,
    PG_ADMIN,
    REPO,
    Cleanup,
    local_dir,
    machine_line,
    median,
    percentile,
    pg_available,
    pg_database,
    table,
)


class Queue:
    """A fresh memq queue (local root, forced shared mode, or PostgreSQL) and its workers."""

    def __init__(self, kind: str, cleanup: Cleanup, tmp: str | None) -> None:
        from memq.options import RootOptions
        from memq.root import open_store

        self.kind = kind
        self.dir = local_dir(tmp, f"bench-worker-{kind}-", cleanup)
        self.root = self.dir / "root"
        self.db = pg_database(cleanup) if kind == "postgres" else None
        self.control = pg_database(cleanup, "memq_control") if kind == "postgres" else None  # (see part b)
        if self.control:  # the same schema: a database nobody ever used is not on autovacuum's list
            open_store(RootOptions(root=str(self.dir / "control"), db=self.control), create=True).backend.dispose()
        mode = kind if kind in ("local", "shared") else None
        self.cli = ["--root", str(self.root)] + (["--db", self.db] if self.db else []) + (
            ["--db-mode", mode] if mode else [])
        self.store = open_store(RootOptions(root=str(self.root), db=self.db, db_mode=mode), create=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.txlogs: list[Path] = []
        self.stracelogs: list[Path] = []
        cleanup.add(self.stop)
        cleanup.add(self.store.backend.dispose)

    def submit(self, grid: str, jobs: list[Any]) -> tuple[float, float]:
        """Submit jobs; (time just before, time just after Store.submit returned)."""
        from memq.spec import GridSpec, GroupSpec

        t0 = time.time()
        result = self.store.submit(GridSpec(grid, (GroupSpec("g"),), tuple(jobs)))
        t1 = time.time()
        assert result.added == len(jobs), result
        return t0, t1

    def start_workers(self, n: int, *, poll: float, worker_args: list[str], counting: bool = False,
                      strace: bool = False) -> None:
        for i in range(len(self.procs), len(self.procs) + n):
            argv = [*self.cli, "worker", "--name", f"w{i}", "--poll", str(poll), "--scratch",
                    str(self.dir / "scratch"), *worker_args]
            env = dict(os.environ)
            if counting:
                txlog = self.dir / f"tx.{i}"
                txlog.touch()
                self.txlogs.append(txlog)
                env["MEMQ_BENCH_TXLOG"] = str(txlog)
                argv = [sys.executable, str(BENCH_DIR / "_counting_worker.py"), *argv]
            else:
                argv = [*MEMQ, *argv]
            if strace:
                slog = self.dir / f"strace.{i}"
                self.stracelogs.append(slog)
                argv = ["strace", "-f", "-ttt", "-e", "trace=symlink", "-o", str(slog), *argv]
            out = open(self.dir / f"worker.{i}.log", "wb")  # noqa: SIM115 - the child keeps it
            self.procs.append(subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=out, env=env))
            out.close()

    def wait_registered(self, n: int, timeout: float = 600.0) -> float:
        """Wait until n workers are active (their registration is the last thing that changes)."""
        t0 = time.monotonic()
        while True:
            active = [w for w in self.store.workers() if w["state"] == "active"]
            if len(active) >= n:
                return time.monotonic() - t0
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                log = (self.dir / f"worker.{self.procs.index(dead[0])}.log").read_text()[-600:]
                raise RuntimeError(f"a worker exited ({dead[0].returncode}): {log}")
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"only {len(active)} of {n} workers registered in {timeout:.0f}s")
            time.sleep(0.5)

    def worker_pids(self) -> list[int]:
        """The memq worker processes (under strace: its child)."""
        pids = []
        for p in self.procs:
            if not self.stracelogs:
                pids.append(p.pid)
                continue
            try:
                children = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
            except OSError:
                children = []
            pids.extend(int(c) for c in children[:1])
        return pids

    def stop(self, sig: int = signal.SIGTERM, wait: float = 20.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(sig)
        deadline = time.monotonic() + wait
        for p in self.procs:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def transactions(self, t0: float, t1: float, workers: list[int] | None = None) -> Counter[str]:
        """Store transactions of the counting workers (all, or these indexes) with a timestamp in
        [t0, t1), by function."""
        found: Counter[str] = Counter()
        for log in self.txlogs if workers is None else [self.txlogs[i] for i in workers]:
            for line in log.read_text().splitlines():
                stamp, _rw, name = line.split(" ", 2)
                if t0 <= float(stamp) < t1:
                    found[name.replace(".<locals>.tx", "").replace(".<locals>.<lambda>", "")] += 1
        return found

    def lock_acquisitions(self, t0: float, t1: float) -> int:
        pattern = re.compile(r"^\d+\s+([\d.]+) symlink\(.*queue\.db\.lock\"\) = 0")
        n = 0
        for log in self.stracelogs:
            for line in log.read_text().splitlines():
                m = pattern.match(line)
                if m and t0 <= float(m.group(1)) < t1:
                    n += 1
        return n


def pg_xacts(db_url: str) -> int:
    import sqlalchemy as sa

    name = db_url.rsplit("/", 1)[1]
    engine = sa.create_engine(PG_ADMIN)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                                            "WHERE datname = :n"), {"n": name}).scalar_one())
    finally:
        engine.dispose()


def pg_table_ops(db_url: str) -> int:
    """Scans, inserts, updates and deletes on the database's tables, as the server counts them (its
    own read of them is a transaction in that database: read it outside the counted window)."""
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(
                "SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0) + n_tup_ins + n_tup_upd + n_tup_del), 0) "
                "FROM pg_stat_user_tables")).scalar_one())
    finally:
        engine.dispose()
        time.sleep(1.0)  # its backend's statistics reach the server as it exits


def rss_mb(pids: list[int]) -> list[float]:
    out = []
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return out


# -- a: submit -> start ---------------------------------------------------------------------------


def part_a(kind: str, args: argparse.Namespace, rows: list[list[Any]]) -> None:
    from memq.spec import JobSpec

    cleanup = Cleanup()
    try:
        q = Queue(kind, cleanup, args.tmp)
        q.start_workers(args.workers, poll=args.poll, worker_args=["--gpus", "none", "--slots", "1"])
        q.wait_registered(args.workers)
        time.sleep(args.idle_first)
        rng = random.Random(3)
        latencies, submit_calls = [], []
        for i in range(args.latency_jobs):
            out = q.dir / f"start.{i}"
            job = JobSpec("lat", "g", "command", {"i": i, "out": str(out)},
                          command=["sh", "-c", "date +%s.%N > {out}.tmp && mv {out}.tmp {out}"])
            t0, t1 = q.submit("lat", [job])
            deadline = time.monotonic() + 60
            while not out.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job {i} did not start within 60 s")
                time.sleep(0.005)
            latencies.append(float(out.read_text()) - t1)
            submit_calls.append(t1 - t0)
            time.sleep(rng.uniform(0.2, 2.5))
        lat = sorted(latencies)
        med = median(lat)
        rows.append([kind, args.workers, args.poll, len(lat), f"{med:.3f}", f"{percentile(lat, 90):.3f}",
                     f"{lat[0]:.3f}", f"{lat[-1]:.3f}", f"{median(submit_calls) * 1000:.1f}", "< 1 s",
                     "yes" if med < 1.0 else "NO"])
        print(f"  a {kind:8s}: median {med:.3f}s max {lat[-1]:.3f}s over {len(lat)} jobs", flush=True)
    finally:
        cleanup.run()


# -- b / d: idle transactions ---------------------------------------------------------------------


def busy_workers(q: Queue, k: int) -> set[int]:
    """Submit k long jobs; once each runs, the indexes of the workers that run them."""
    from memq.spec import JobSpec

    q.submit("busy", [JobSpec("busy", "g", "command", {"i": i}, command=["sleep", "3600"]) for i in range(k)])
    deadline = time.monotonic() + 120
    while len(running := [j for j in q.store.jobs(grid="busy") if j["state"] == "running"]) < k:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(running)} of {k} busy jobs started")
        time.sleep(0.2)
    return {int(q.store.attempts(j["id"])[-1]["worker"].removeprefix("w")) for j in running}


def part_idle(kind: str, n: int, args: argparse.Namespace, rows: list[list[Any]], *, strace: bool) -> None:
    cleanup = Cleanup()
    try:
        q = Queue(kind, cleanup, args.tmp)
        t_start = time.monotonic()
        q.start_workers(n, poll=args.poll, worker_args=["--gpus", "none", "--slots", "1"], counting=True,
                        strace=strace)
        q.wait_registered(n)
        up = time.monotonic() - t_start
        busy = busy_workers(q, args.busy) if args.busy else set()
        time.sleep(args.settle)
        ops0 = pg_table_ops(q.db) if q.db else None
        x0 = (pg_xacts(q.db), pg_xacts(q.control)) if q.db and q.control else None
        w0 = time.time()
        mem = []
        for _ in range(max(args.wakes, 1)):
            time.sleep(args.window / 2 / max(args.wakes, 1))
            if args.wakes:
                q.store.bump_version()
            mem = mem or rss_mb(q.worker_pids())
            time.sleep(args.window / 2 / max(args.wakes, 1))
        w1 = time.time()
        x1 = (pg_xacts(q.db), pg_xacts(q.control)) if q.db and q.control else None
        ops = pg_table_ops(q.db) - ops0 if q.db and ops0 is not None else None
        idle = [i for i in range(n) if i not in busy]
        tx = q.transactions(w0, w1, idle)
        total = sum(tx.values())
        busy_tx = sum(q.transactions(w0, w1, sorted(busy)).values())
        before = sum(q.transactions(0.0, w0).values())  # start-up and settling: registrations wake everyone
        locks = q.lock_acquisitions(w0, w1) if strace else None
        by_op = ", ".join(f"{k.rpartition('.')[2]} {v}" for k, v in tx.most_common())  # (method names)
        pg = "" if x0 is None or x1 is None else f"{x1[0] - x0[0]} / {x1[1] - x0[1]}"
        per_min = total / max(len(idle), 1) / args.window * 60
        rows.append([kind, f"{len(idle)}+{len(busy)}", f"{up:.0f}", before, args.settle, args.window, total,
                     f"{per_min:.2f}", busy_tx, pg, "" if ops is None else ops, "" if locks is None else locks,
                     f"{median(mem):.0f}" if mem else "", by_op or "-"])
        extra = (f"; pg xacts (worker db / control db) {pg}, table ops {ops}" if pg else "") + (
            f"; lock acquisitions {locks}" if strace else "")
        wakes = f" with {args.wakes} version bumps" if args.wakes else ""
        print(f"  idle {kind:8s} x{len(idle)} (+{len(busy)} busy): {total} transactions of idle workers in "
              f"{args.window:.0f}s{wakes} ({by_op or 'none'}); busy workers {busy_tx}{extra}", flush=True)
    finally:
        cleanup.run()


# -- c: idle gap between consecutive jobs on one slot ---------------------------------------------


def part_c(kind: str, gpu: bool, args: argparse.Namespace, rows: list[list[Any]]) -> None:
    from memq.spec import JobSpec

    cleanup = Cleanup()
    try:
        q = Queue(kind, cleanup, args.tmp)
        outs = [q.dir / f"times.{i}" for i in range(args.chain)]
        script = "s=$(date +%s.%N); sleep {dur}; e=$(date +%s.%N); echo $s $e > {out}"
        jobs = [JobSpec("chain", "g", "command", {"i": i, "out": str(o), "dur": args.job_seconds},
                        command=["sh", "-c", script], gpus=1 if gpu else 0) for i, o in enumerate(outs)]
        q.submit("chain", jobs)
        q.start_workers(1, poll=args.poll,
                        worker_args=["--gpus", args.gpu_spec] if gpu else ["--gpus", "none", "--slots", "1"])
        deadline = time.monotonic() + 60 + args.chain * (args.job_seconds + 5)
        while not all(o.exists() and o.read_text().strip() for o in outs):
            if time.monotonic() > deadline:
                raise RuntimeError("the chain did not finish in time")
            time.sleep(0.05)
        spans = sorted(tuple(map(float, o.read_text().split())) for o in outs)
        gaps = sorted(b[0] - a[1] for a, b in itertools.pairwise(spans))
        med = median(gaps)
        rows.append([kind, f"--gpus {args.gpu_spec}" if gpu else "CPU slot", len(gaps), f"{med:.3f}", f"{gaps[-1]:.3f}",
                     f"{gaps[0]:.3f}", "< 0.5 s", "yes" if med < 0.5 and gaps[-1] < 0.5 else
                     ("median yes, max NO" if med < 0.5 else "NO")])
        print(f"  c {kind:8s} {'gpu' if gpu else 'cpu'}: gap median {med:.3f}s max {gaps[-1]:.3f}s", flush=True)
    finally:
        cleanup.run()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="a,b,c,d", help="which measurements (a,b,c,d)")
    ap.add_argument("--backends", default="local,shared,postgres", help="for a, b and c")
    ap.add_argument("--poll", type=float, default=1.0, help="the workers' --poll (default 1)")
    ap.add_argument("--workers", type=int, default=4, help="a: idle workers waiting for jobs")
    ap.add_argument("--latency-jobs", type=int, default=20, help="a: jobs submitted one at a time")
    ap.add_argument("--idle-first", type=float, default=5.0, help="a: seconds the workers idle before the first job")
    ap.add_argument("--idle-workers", type=int, default=8, help="b: idle workers")
    ap.add_argument("--many", type=int, default=64, help="d: idle workers on one SQLite root")
    ap.add_argument("--busy", type=int, default=0, help="b/d: of the workers, how many run a long job")
    ap.add_argument("--wakes", type=int, default=0, help="b/d: bumps of the version file in the window")
    ap.add_argument("--settle", type=float, default=20.0, help="b/d: seconds after the last worker registered")
    ap.add_argument("--window", type=float, default=30.0, help="b/d: seconds counted")
    ap.add_argument("--no-strace", action="store_true", help="b: do not count lock acquisitions with strace")
    ap.add_argument("--chain", type=int, default=15, help="c: jobs in the chain")
    ap.add_argument("--job-seconds", type=float, default=0.3, help="c: how long each job sleeps")
    ap.add_argument("--gpu-spec", default="0",
                    help="c: the worker's --gpus (default 0: trusted without NVML; 'auto' on a GPU node adds "
                         "NVML discovery and the per-claim health check)")
    ap.add_argument("--tmp", default=None, help="directory for roots (default: $TMPDIR or /tmp)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    backends = [b for b in args.backends.split(",") if b]
    if "postgres" in backends and not pg_available():
        print("PostgreSQL not reachable: skipping postgres")
        backends.remove("postgres")
    print(f"worker latency: {machine_line()}")
    a_rows: list[list[Any]] = []
    idle_rows: list[list[Any]] = []
    c_rows: list[list[Any]] = []

    def attempt(what: str, fn: Any, *fn_args: Any, **kw: Any) -> None:
        try:
            fn(*fn_args, **kw)
        except Exception as exc:
            print(f"  {what}: FAILED: {type(exc).__name__}: {exc}", flush=True)

    for kind in backends:
        if "a" in parts:
            attempt(f"a {kind}", part_a, kind, args, a_rows)
        if "c" in parts:
            attempt(f"c {kind} gpu", part_c, kind, True, args, c_rows)
            attempt(f"c {kind} cpu", part_c, kind, False, args, c_rows)
        if "b" in parts:
            attempt(f"b {kind}", part_idle, kind, args.idle_workers, args, idle_rows,
                    strace=kind == "shared" and not args.no_strace)
    if "d" in parts:
        attempt(f"d local x{args.many}", part_idle, "local", args.many, args, idle_rows, strace=False)
    print()
    if a_rows:
        print(table(["backend", "workers", "poll s", "jobs", "median s", "p90 s", "min s", "max s", "submit ms",
                     "target", "met"], a_rows, title="a. submit -> job process started (idle workers polling)"))
        print()
    if c_rows:
        print(table(["backend", "slot", "gaps", "median s", "max s", "min s", "target", "met"], c_rows,
                    title=f"c. idle gap between consecutive jobs on one slot (jobs sleep {args.job_seconds:g} s)"))
        print()
    if idle_rows:
        print(table(["backend", "idle+busy", "start s", "start tx", "settle s", "window s", "tx", "tx/worker/min",
                     "busy tx", "pg xacts", "pg table ops", "lock acq", "RSS MB/worker",
                     "transactions of idle workers"], idle_rows,
                    title="b/d. idle workers, nothing changing (target 0 transactions)"))
        print("\n  tx: store transactions logged by the idle workers in the window (busy tx: by the busy ones);\n"
              "  pg xacts: pg_stat_database delta of the worker database / of an unused control database (the\n"
              "  server's own autovacuum visits); pg table ops: pg_stat_user_tables scans + rows written;"
              "\n  lock acq: symlink() lock acquisitions seen by strace (shared "
              "mode);\n  start s: until all workers registered; start tx: transactions before the window "
              "(start-up, busy jobs)")
    print(f"\nload average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
