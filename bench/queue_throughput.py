"""Queue throughput (issues 2, 20): no-op jobs pushed through claim -> finish by 1, 4, 8 and 16 processes.

    python bench/queue_throughput.py                       # every backend, 1/4/8/16 processes, 3 runs each
    python bench/queue_throughput.py --backends memq-local,huey --procs 4 --repeat 5 --jobs 5000
    python bench/queue_throughput.py --profile memq-shared # cProfile of one claim loop process (P=4)

Backends (each run gets a fresh queue; SQLite files on the local disk under --tmp unless noted):

    memq-local      memq, SQLite local mode (WAL, kept connection)
    memq-shared     memq, SQLite shared mode forced on local disk (--db-mode shared: memq's lease lock,
                    DELETE journal, synchronous=FULL, fresh connection per transaction)
    memq-twohost    memq on the two sshfs mounts of one directory (processes alternate between them;
                    shared mode is chosen by the filesystem type)
    memq-twohost-1  the same, one job per transaction (`memq worker --claim-ahead 0`)
    memq-postgres   memq on PostgreSQL (a fresh database per run)
    plain-sqlite    baseline without memq: durable SQLite (DELETE journal, FULL sync, fresh connection
                    per transaction, BEGIN IMMEDIATE), finish + claim in one transaction
    plain-postgres  baseline without memq: psycopg, one kept connection, finish + claim (SKIP LOCKED)
                    in one transaction
    plain-twohost   the same loop across the two mounts: no memq lock, so it is expected to break
    optuna          Optuna's JournalFileBackend queue (enqueue_trial / pop WAITING -> RUNNING -> COMPLETE)
    optuna-twohost  the same across the two mounts
    huey            huey's SqliteHuey (WAL): dequeue + execute (stores the result) per task

The memq loops claim ahead as `memq worker` does by default (up to 1 s of work, at most 16 jobs per
transaction: memq/claim_ahead.py); no-op jobs take no time, so they claim 16 at a time after the
first job. Throughput is timed from a common start instant that every process waits for once it has imported
everything and opened its queue (interpreter start-up excluded) until the last process finds the
queue empty. Every run is verified: each job claimed exactly once and finished (duplicates, lost).
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _loops
from _common import (
    BENCH_DIR,
    HELPERS,
    REPO,
    Cleanup,
    fsync_ms,
    load1,
    local_dir,
    machine_line,
    median,
    pg_available,
    pg_database,
    proc_cpu,
    table,
    twohost_dir,
    twohost_mounts,
)


@dataclass(frozen=True)
class Backend:
    kind: str  # which loop: memq | plain | optuna | huey
    where: str  # local | twohost | postgres
    jobs: int  # default number of jobs per run
    mode: str | None = None  # memq's --db-mode
    about: str = ""
    claim_ahead: float | None = None  # memq: `memq worker --claim-ahead` (None: its default)


BACKENDS: dict[str, Backend] = {
    "memq-local": Backend("memq", "local", 2000, "local", "SQLite WAL, kept connection"),
    "memq-shared": Backend("memq", "local", 1000, "shared", "forced shared mode on local disk"),
    "memq-twohost": Backend("memq", "twohost", 300, None, "two sshfs mounts, shared mode"),
    "memq-twohost-1": Backend("memq", "twohost", 300, None, "the same, one job per transaction", 0.0),
    "memq-postgres": Backend("memq", "postgres", 2000, None, "PostgreSQL, SKIP LOCKED"),
    "plain-sqlite": Backend("plain", "local", 500, None, "DELETE/FULL, fresh conn, no memq"),
    "plain-postgres": Backend("pgplain", "postgres", 2000, None, "psycopg, SKIP LOCKED, no memq"),
    "plain-twohost": Backend("plain", "twohost", 300, None, "plain SQLite on two mounts, no lock"),
    "optuna": Backend("optuna", "local", 500, None, "JournalFileBackend (symlink lock)"),
    "optuna-twohost": Backend("optuna", "twohost", 300, None,
                              "JournalFileBackend on two mounts, symlink lock with EPERM = held"),
    "huey": Backend("huey", "local", 1000, None, "SqliteHuey (WAL), dequeue+execute"),
}
DEFAULT_BACKENDS = list(BACKENDS)


@dataclass
class Run:
    backend: str
    procs: int
    jobs: int
    seconds: float = float("nan")
    claimed: int = 0
    duplicates: int = 0
    lost: int = 0
    errors: int = 0
    load: float = 0.0
    fsync: float = 0.0  # ms of one 4 KiB write + fdatasync on the local disk just before the run
    per_process: list[int] = field(default_factory=list)  # jobs each process claimed
    cpu: float = 0.0  # CPU seconds of the benchmark processes inside the timed loop, all together
    helper_cpu: float | None = None  # CPU seconds of the server (PostgreSQL) or sshfs/ssh processes
    notes: list[str] = field(default_factory=list)
    error_kinds: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.claimed / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu / self.claimed if self.claimed else float("nan")

    @property
    def helper_ms(self) -> float | None:
        return None if self.helper_cpu is None or not self.claimed else 1000 * self.helper_cpu / self.claimed


# -- one run -------------------------------------------------------------------------------------


def prepare(name: str, b: Backend, n: int, cleanup: Cleanup, tmp: str | None, analyze: bool = False,
            ) -> dict[str, Any]:
    """Create the queue with n jobs; returns what the children need (one entry per host)."""
    ctl = local_dir(tmp, f"bench-{name}-ctl-", cleanup)
    if b.where == "twohost":
        hosts = twohost_dir(f"memq-bench-{name}-", cleanup)
    else:
        hosts = [local_dir(tmp, f"bench-{name}-", cleanup)]
    db = pg_database(cleanup) if b.where == "postgres" else None
    if b.kind == "memq":
        from memq.options import RootOptions
        from memq.root import open_store
        from memq.spec import GridSpec, GroupSpec, JobSpec

        roots = [str(h / "root") for h in hosts]
        store = open_store(RootOptions(root=roots[0], db=db, db_mode=b.mode), create=True)
        jobs = tuple(JobSpec("bench", "g", "command", {"i": i}, command=["true"]) for i in range(n))
        added = store.submit(GridSpec("bench", (GroupSpec("g"),), jobs)).added
        assert added == n, added
        if analyze and db:  # what-if: give the planner statistics (memq does not ANALYZE after a submit)
            store.backend.run(lambda conn: conn.exec_driver_sql("ANALYZE"), write=True)
        mode = store.backend.mode
        store.backend.dispose()
        return {"ctl": ctl, "hosts": [{"root": r, "db": db, "mode": b.mode} for r in roots], "store_mode": mode}
    if b.kind == "pgplain":
        _loops.pgplain_create(db, n)
        return {"ctl": ctl, "hosts": [{"db": db}]}
    paths = [str(h / f"queue.{b.kind}") for h in hosts]
    {"plain": _loops.plain_create, "optuna": _loops.optuna_create, "huey": _loops.huey_create}[b.kind](paths[0], n)
    return {"ctl": ctl, "hosts": [{"path": p} for p in paths]}


def verify(b: Backend, setup: dict[str, Any], n: int, run: Run) -> None:
    host0 = setup["hosts"][0]
    if b.kind == "memq":
        from memq.options import RootOptions
        from memq.root import open_store

        store = open_store(RootOptions(root=host0["root"], db=host0["db"], db_mode=host0["mode"]), create=False)
        counts = store.counts().get("bench", {})
        problems = store.integrity()
        rows = store.jobs(grid="bench")
        store.backend.dispose()
        run.lost = n - counts.get("succeeded", 0)
        retried = sum(1 for r in rows if r["attempt"] != 1)
        if retried:
            run.notes.append(f"{retried} jobs with attempt != 1")
        if problems:
            run.notes.append("integrity: " + "; ".join(problems[:3]))
    elif b.kind == "plain":
        found = _loops.plain_verify(host0["path"])
        run.lost = n - found["states"].get("succeeded", 0)
        if found["finishes"] is not None and found["finishes"] != n:
            run.notes.append(f"finish counter {found['finishes']} (expected {n})")
        if found["integrity"] != ["ok"]:
            run.notes.append(f"integrity_check: {' '.join(found['integrity'][0].split())[:60]}"
                             + (f" (+{len(found['integrity']) - 1} more)" if len(found["integrity"]) > 1 else ""))
    elif b.kind == "pgplain":
        found = _loops.pgplain_verify(host0["db"])
        run.lost = n - found["states"].get("succeeded", 0)
    elif b.kind == "optuna":
        found = _loops.optuna_verify(host0["path"])
        run.lost = n - found["states"].get("COMPLETE", 0)
    elif b.kind == "huey":
        found = _loops.huey_verify(host0["path"])
        run.lost = n - found["results"]
        if found["left"]:
            run.notes.append(f"{found['left']} tasks left in the queue")


def run_once(name: str, procs: int, n: int, args: argparse.Namespace, profile: str | None) -> Run:
    b = BACKENDS[name]
    run = Run(name, procs, n)
    cleanup = Cleanup()
    children: list[subprocess.Popen[bytes]] = []
    try:
        setup = prepare(name, b, n, cleanup, args.tmp, args.analyze)
        ctl: Path = setup["ctl"]
        go = ctl / "go"
        specs = []
        for i in range(procs):
            spec = {"kind": b.kind, "name": f"p{i}", "ready": str(ctl / f"ready.{i}"), "go": str(go),
                    "out": str(ctl / f"out.{i}.json"), "time_limit": args.time_limit,
                    "optuna_lock": "eperm" if b.where == "twohost" else "symlink",
                    **({} if b.claim_ahead is None else {"claim_ahead": b.claim_ahead}),
                    **setup["hosts"][i % len(setup["hosts"])]}
            if profile and i == 0:
                spec["profile"] = profile
            spec_path = ctl / f"spec.{i}.json"
            spec_path.write_text(json.dumps(spec))
            specs.append(spec)
            err = open(ctl / f"err.{i}", "wb")  # noqa: SIM115 - closed with the child
            children.append(subprocess.Popen([sys.executable, str(BENCH_DIR / "_loops.py"), str(spec_path)],
                                             cwd=REPO, stdout=err, stderr=err))
            err.close()
        deadline = time.monotonic() + 300
        while not all(Path(s["ready"]).exists() for s in specs):
            dead = [i for i, c in enumerate(children) if c.poll() is not None]
            if dead:
                raise RuntimeError(f"p{dead[0]} failed before the start: {_tail(ctl / f'err.{dead[0]}', 800)}")
            if time.monotonic() > deadline:
                raise RuntimeError("the processes were not ready within 300 s")
            time.sleep(0.01)
        run.load = load1()
        run.fsync = fsync_ms(ctl)
        helpers = HELPERS.get(b.where)
        helper0 = proc_cpu(helpers) if helpers else 0.0
        start = time.time() + 0.05
        (ctl / "go.tmp").write_text(repr(start))
        os.replace(ctl / "go.tmp", go)
        for i, child in enumerate(children):
            try:
                child.wait(timeout=max(args.time_limit * 2 - (time.time() - start), 1))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
                run.notes.append(f"p{i} killed after the time limit")
        if helpers:
            time.sleep(0.2)  # let the postmaster reap its backends
            run.helper_cpu = proc_cpu(helpers) - helper0
        outs = []
        for i, spec in enumerate(specs):
            if Path(spec["out"]).exists():
                outs.append(json.loads(Path(spec["out"]).read_text()))
            else:
                run.notes.append(f"p{i} exit {children[i].returncode}: {_tail(ctl / f'err.{i}', 120)}")
        if not outs:
            raise RuntimeError("; ".join(run.notes))
        run.per_process = sorted(len(out["claims"]) for out in outs)
        claims = [tuple(c) for out in outs for c in out["claims"]]
        by_job = Counter(job for job, _ in claims)
        run.claimed = len(by_job)
        run.duplicates = sum(k - 1 for k in by_job.values())
        run.seconds = max(out["end"] for out in outs) - start
        run.cpu = sum(out.get("cpu", 0.0) for out in outs)
        for out in outs:
            run.error_kinds.update(out.get("errors", {}))
            if out.get("gave_up"):
                run.notes.append(f"gave up: {out['gave_up'][:80]}")
            if out.get("breaks"):
                run.notes.append(f"{out['breaks']} lock breaks")
        run.errors = sum(run.error_kinds.values())
        verify(b, setup, n, run)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        cleanup.run()
    return run


def _tail(path: Path, n: int) -> str:
    """The last line a child wrote (its exception, usually), at most n characters."""
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1][-n:] if lines else "(no output)"


# -- the report ----------------------------------------------------------------------------------

TARGETS = {  # backend -> (which process counts it applies to, text, check(rate, median rate of its anchor))
    "memq-local": ((4,), ">=1500/s (4 procs)", lambda r, _o: r >= 1500),
    "memq-shared": ((1, 4, 8), ">=300/s", lambda r, _o: r >= 300),
    "memq-postgres": ((1, 4, 8, 16), ">=1.5x plain-postgres (issue 20)", lambda r, o: o is not None and r >= 1.5 * o),
    "memq-twohost": ((1, 4, 8), "0 dup/0 lost, >=2x optuna-twohost",
                     lambda r, o: o is not None and r >= 2 * o),
}
ANCHORS = {"memq-twohost": "optuna-twohost", "memq-postgres": "plain-postgres"}  # compared in the same run


def report(runs: list[Run], backends: list[str], procs: list[int]) -> tuple[str, list[str]]:
    rows, verdicts = [], []
    by = {(b, p): [r for r in runs if r.backend == b and r.procs == p] for b in backends for p in procs}
    med = {k: median([r.rate for r in v]) for k, v in by.items() if v}
    for b in backends:
        for p in procs:
            group = by[(b, p)]
            if not group:
                continue
            rates = [r.rate for r in group]
            dup = max(r.duplicates for r in group)
            lost = max(r.lost for r in group)
            errs = median([r.errors for r in group])
            target, met = "", ""
            if b in TARGETS and p in TARGETS[b][0]:
                _, target, check = TARGETS[b]
                other = med.get((ANCHORS[b], p)) if b in ANCHORS else None
                ok = check(med[(b, p)], other) and (not b.startswith("memq") or (dup == 0 and lost == 0))
                met = "yes" if ok else "NO"
                if other:
                    target += f" ({med[(b, p)] / other:.1f}x)"
                verdicts.append(f"{b} P={p}: {target} -> {met}")
            elif b.startswith("memq") and (dup or lost):
                met = "NO (dup/lost)"
            helper = [r.helper_ms for r in group if r.helper_ms is not None]
            rows.append([b, p, group[0].jobs, len(group), f"{med[(b, p)]:.0f}",
                         f"{min(rates):.0f}-{max(rates):.0f}", dup, lost, f"{errs:g}",
                         f"{median([r.cpu_ms for r in group]):.2f}", f"{median(helper):.2f}" if helper else "",
                         f"{median([r.load for r in group]):.1f}", f"{median([r.fsync for r in group]):.1f}",
                         target, met])
    text = table(["backend", "P", "jobs", "runs", "jobs/s (median)", "min-max", "dup (max)", "lost (max)", "errors",
                  "cpu ms/job", "srv ms/job", "load", "fsync ms", "target", "met"], rows)
    return text, verdicts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default=",".join(DEFAULT_BACKENDS), help="comma list (default: all)")
    ap.add_argument("--procs", default="1,4,8,16", help="process counts (default 1,4,8,16)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per (backend, procs); medians are reported")
    ap.add_argument("--jobs", type=int, default=None,
                    help="jobs per run for the local and PostgreSQL backends (default: 2000 memq/postgres, "
                         "1000 memq-shared/huey, 500 plain-sqlite/optuna)")
    ap.add_argument("--twohost-jobs", type=int, default=None, help="jobs per run on the two-host rig (300)")
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds a run may take before giving up")
    ap.add_argument("--tmp", default=None, help="directory for local roots (default: $TMPDIR or /tmp)")
    ap.add_argument("--profile", default=None,
                    help="backend whose first process is profiled with cProfile in one extra run (P=4)")
    ap.add_argument("--analyze", action="store_true",
                    help="what-if for memq-postgres: run ANALYZE after the submit (memq itself does not; without "
                         "statistics PostgreSQL plans the claim as a scan + sort of every queued job)")
    ap.add_argument("--json", default=None, help="also write every run as JSON here")
    args = ap.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        ap.error(f"unknown backend {unknown[0]} (known: {', '.join(BACKENDS)})")
    if any(BACKENDS[b].where == "twohost" for b in backends) and twohost_mounts() is None:
        print("two-host rig not mounted: skipping its backends "
              "(/work/shared/tools/twohost-fs up /srv/twohost /mnt/hostA /mnt/hostB)")
        backends = [b for b in backends if BACKENDS[b].where != "twohost"]
    if any(BACKENDS[b].where == "postgres" for b in backends) and not pg_available():
        print("PostgreSQL not reachable: skipping memq-postgres (/work/shared/tools/pg-local up /tmp/memq-pg 55432)")
        backends = [b for b in backends if BACKENDS[b].where != "postgres"]
    procs = [int(p) for p in args.procs.split(",")]

    def jobs_for(b: str) -> int:
        if BACKENDS[b].where == "twohost":
            return args.twohost_jobs or BACKENDS[b].jobs
        return args.jobs or BACKENDS[b].jobs

    print(f"queue throughput: {machine_line()}")
    print(f"backends {', '.join(backends)}; processes {procs}; {args.repeat} runs each, interleaved")
    runs: list[Run] = []
    t0 = time.monotonic()
    for rep in range(args.repeat):
        for p in procs:  # the backends back to back at each process count: their ratio is a same-load one
            for b in backends:
                try:
                    run = run_once(b, p, jobs_for(b), args, None)
                except Exception as exc:
                    print(f"  run {rep + 1} {b} P={p}: FAILED: {exc}")
                    continue
                runs.append(run)
                extra = (f" claims/process {run.per_process[0]}-{run.per_process[-1]}" if p > 1 else "") + (
                    f" errors={run.errors}" if run.errors else "") + (
                    f" [{'; '.join(run.notes)}]" if run.notes else "")
                print(f"  run {rep + 1} {b:15s} P={p}: {run.rate:7.0f} jobs/s  ({run.claimed} in {run.seconds:.2f}s, "
                      f"dup {run.duplicates}, lost {run.lost}, cpu {run.cpu_ms:.2f} ms/job, load {run.load:.1f}, "
                      f"fsync {run.fsync:.1f} ms)"
                      f"{extra}", flush=True)
    print(f"\n{len(runs)} runs in {time.monotonic() - t0:.0f}s; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    text, verdicts = report(runs, backends, procs)
    print(text)
    print("\n  jobs/s: jobs / (last process done - common start); dup: claims beyond one per job; lost: jobs not\n"
          "  finished as succeeded at the end; errors: retried errors; cpu ms/job: CPU of the benchmark processes\n"
          "  per job; srv ms/job: CPU of the PostgreSQL server or of the sshfs/ssh/sftp processes per job; load:\n"
          "  1-minute load average at the start of the run (2 CPUs shared with other work); fsync ms: one 4 KiB\n"
          "  write + fdatasync on the local disk just before the run (medians over the runs)\n")
    for b in backends:
        print(f"  {b:15s} {BACKENDS[b].about}")
    errors = Counter()
    for r in runs:
        if r.backend.startswith("plain") or r.errors:
            errors.update({f"{r.backend}: {k}": v for k, v in r.error_kinds.items()})
    if errors:
        print("\nerrors seen (retried):")
        for k, v in errors.most_common(10):
            print(f"  {v:6d}  {k}")
    notes = [f"{r.backend} P={r.procs}: {n}" for r in runs for n in r.notes]
    if notes:
        print("\nnotes:")
        for n in dict.fromkeys(notes):
            print(f"  {n}")
    print("\ntargets:")
    for v in verdicts:
        print(f"  {v}")
    if args.profile:
        prof = Path(f"/tmp/bench-profile-{os.getpid()}.prof")
        try:
            run = run_once(args.profile, 4, jobs_for(args.profile), args, str(prof))
            print(f"\ncProfile of process 0 of {args.profile} with 4 processes ({run.rate:.0f} jobs/s this run, "
                  f"{run.claimed} jobs; the profiled process is slower than the others):")
            for order in ("tottime", "cumulative"):
                print(f"--- by {order}")
                pstats.Stats(str(prof), stream=sys.stdout).strip_dirs().sort_stats(order).print_stats(18)
        finally:
            prof.unlink(missing_ok=True)
    if args.json:
        Path(args.json).write_text(json.dumps([{**r.__dict__, "rate": r.rate, "error_kinds": dict(r.error_kinds)}
                                               for r in runs], indent=1))


if __name__ == "__main__":
    main()
