"""Submit and status at scale (issue 2): `memq submit` of 111 and 100,000 jobs, the status query on a
100,000-job table, `memq status --json` and `memq --help`; medians of N repetitions.

    python bench/submit_status.py                  # local, shared, postgres; 5 + 2 submits, 7 queries each
    python bench/submit_status.py --backends local,twohost --big-repeat 1 --repeat 5 --jobs 100000

For each backend (a fresh root, or a fresh PostgreSQL database, per submit):

* submit 111: `memq submit grids/xvbc.yaml` end to end (interpreter start-up included), and the store
  call alone (`Store.submit` of the already parsed grid, in this process); parsing (`load_grid`) apart;
* submit 100k: the same for a generated 1000 x 100 command grid; then the same file submitted again
  (idempotent: nothing added), end to end - unchanged since the last submit, so not expanded again
  (memq.cli.lean) - and with --force (expanded and validated again), and `Store.submit` alone;
* the bare-insert baseline: one transaction that inserts the same 100k job rows into a fresh queue's
  jobs table (SQLite: sqlite3 executemany; PostgreSQL: psycopg COPY), no memq logic: the rows' values,
  JSON included, are serialised inside the timed transaction, keys are precomputed;
* status on the 100,000-job table with 1,000 registered workers, after a realistic mix of states is set
  (60% succeeded with run times, 0.5% failed with attempts, 8 running on 4 of the workers, the rest
  queued): `Store.counts()` and `memq.dashboard.snapshot()` in this process, and `memq status --json`
  and `memq status` (table) end to end;
* claim latency on that table: one process, claim -> finish, ms per job (the queue's hot path with a
  big backlog);
* `memq --help`.

Then the issue's targets (issue 20), each as a same-run figure or ratio with "met" or "NO".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    MEMQ,
    REPO,
    Cleanup,
    local_dir,
    machine_line,
    median,
    pg_available,
    pg_database,
    table,
    timed,
    twohost_dir,
    twohost_mounts,
)

XVBC = REPO / "grids" / "xvbc.yaml"
TARGETS = {"submit": 10.0, "counts": 0.2, "snapshot": 0.2, "status --json": 1.0, "--help": 0.5}
WORKERS = 1000  # registered workers on the status table (issue 20)
# what `memq status` imports on its lean path (memq.cli.lean; the table adds rich)
STATUS_IMPORTS = "import memq.cli.lean, memq.dashboard, memq.store.direct, memq.store.overview, sqlite3"


def big_grid(path: Path, n: int) -> Path:
    a = 1000 if n >= 1000 else n
    b = max(n // a, 1)
    path.write_text(f"""\
name: big
defaults:
  kind: command
  command: ["true", "{{a}}", "{{b}}"]
  resources: {{gpus: 0}}
groups:
  - name: all
    grid: {{a: {list(range(a))}, b: {list(range(b))}}}
""")
    return path


class Where:
    """One backend: how to make a fresh queue and how the CLI reaches it."""

    def __init__(self, kind: str, base: str | None, cleanup: Cleanup) -> None:
        self.kind = kind
        self.base = base
        self.cleanup = cleanup

    def fresh(self) -> tuple[list[str], Any]:
        """CLI arguments and RootOptions of a new, empty queue."""
        from memq.options import RootOptions

        db = mode = None
        if self.kind == "twohost":
            root = twohost_dir("memq-bench-status-", self.cleanup)[0] / "root"
        else:
            root = local_dir(self.base, f"bench-status-{self.kind}-", self.cleanup) / "root"
        if self.kind == "postgres":
            db = pg_database(self.cleanup)
        if self.kind in ("local", "shared"):
            mode = self.kind
        args = ["--root", str(root)] + (["--db", db] if db else []) + (["--db-mode", mode] if mode else [])
        return args, RootOptions(root=str(root), db=db, db_mode=mode)


def populate(store: Any, seed: int = 1) -> None:
    """Give the big table a realistic mix of states (direct SQL: the benchmark's own setup)."""
    import random

    import sqlalchemy as sa

    from memq.store import schema as s

    rng = random.Random(seed)
    jobs, attempts = s.jobs, s.attempts
    now = time.time()
    workers = [store.register_worker(f"bench-w{i}", "bench", 0, "bench", [0, 1], 0, 60.0) for i in range(4)]
    idle = [{"name": f"bench-idle{i}", "host": f"node{i // 8:03d}", "pid": 1000 + i, "boot": "bench", "incarnation": 1,
             "state": "active", "gpus": [i % 8], "slots": 1, "heartbeat": 0, "heartbeat_at": now - rng.random() * 60,
             "lease": 60.0, "drain": False, "started_at": now - 3600} for i in range(WORKERS - len(workers))]

    def tx(conn: Any) -> None:
        conn.execute(s.workers.insert(), idle)
        ids = [r[0] for r in conn.execute(sa.select(jobs.c.id).order_by(jobs.c.id))]
        n = len(ids)
        done, failed = ids[: int(n * 0.6)], ids[int(n * 0.6): int(n * 0.605)]
        conn.execute(jobs.update().where(jobs.c.id <= done[-1]).values(
            state="succeeded", attempt=1, started_at=now - 7200, finished_at=now - 3600, exit_code=0))
        conn.execute(jobs.update().where(jobs.c.id.in_(failed)).values(
            state="failed", attempt=3, failures=3, started_at=now - 600, finished_at=now - 300, exit_code=1,
            reason="exit code 1"))
        conn.execute(attempts.insert(), [
            {"job_id": j, "attempt": k, "started_at": now - 600, "ended_at": now - 300 - rng.random(),
             "outcome": "failed", "exit_code": 1, "reason": "exit code 1"} for j in failed for k in (1, 2, 3)])
        running = ids[int(n * 0.605): int(n * 0.605) + 8]
        for k, j in enumerate(running):
            conn.execute(jobs.update().where(jobs.c.id == j).values(
                state="running", attempt=1, worker_id=workers[k % 4].id, started_at=now - 60,
                progress={"epoch": 3, "val_corr": 0.41}))

    store.backend.run(tx, write=True)


def job_rows(spec: Any, grid_id: int, group_id: int) -> list[dict[str, Any]]:
    """The rows Store.submit inserts for ``spec`` (one group), keys computed beforehand."""
    return [{"key": j.key, "grid_id": grid_id, "group_id": group_id, "kind": j.kind, "params": j.params,
             "repeat": j.repeat, "command": j.command, "spec_hash": j.spec_hash, "gpus": j.gpus, "cpus": j.cpus,
             "mem_gb": j.mem_gb, "gpu_share": j.gpu_share, "gpu_mem_gb": j.gpu_mem_gb, "priority": j.priority,
             "max_attempts": j.max_attempts, "state": "queued", "attempt": 0, "failures": 0, "crashes": 0,
             "cancel_requested": False, "from_scratch": False,
             "submitted_at": time.time()} for j in spec.jobs]


def bare_insert(store: Any, spec: Any) -> float:
    """Seconds of one transaction inserting the grid's job rows into the (empty, fresh) jobs table, no
    memq logic: sqlite3 executemany or psycopg COPY; JSON values serialised inside the timed part."""
    import json

    import sqlalchemy as sa

    from memq.store import schema as s

    def setup(conn: Any) -> tuple[int, int]:
        grid = conn.execute(s.grids.insert().values(name=spec.name, paused=False, created_at=time.time())
                            .returning(s.grids.c.id)).scalar_one()
        group = conn.execute(s.groups.insert().values(grid_id=grid, name="all", ready=True)
                             .returning(s.groups.c.id)).scalar_one()
        return grid, group

    rows = job_rows(spec, *store.backend.run(setup))
    columns = list(rows[0])
    as_json = {c.name for c in s.jobs.c if isinstance(c.type, sa.JSON)}

    def values(row: dict[str, Any]) -> list[Any]:
        return [json.dumps(v) if c in as_json and v is not None else v for c, v in row.items()]

    if store.backend.dialect == "sqlite":
        import sqlite3

        conn = sqlite3.connect(store.backend.path, isolation_level=None)
        conn.execute(f"PRAGMA synchronous={'NORMAL' if store.backend.mode == 'local' else 'FULL'}")
        sql = f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, (values(r) for r in rows))
        conn.execute("COMMIT")
        seconds = time.perf_counter() - t0
        conn.close()
        return seconds
    import psycopg

    url = store.backend.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        with conn.cursor() as cursor, cursor.copy(f"COPY jobs ({', '.join(columns)}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(values(r))
        conn.commit()
        return time.perf_counter() - t0


def bench_backend(kind: str, args: argparse.Namespace, rows: list[list[Any]], goals: list[list[Any]]) -> None:
    from memq.cli.lean import fingerprint
    from memq.dashboard import snapshot
    from memq.grid import load_grid
    from memq.root import open_store

    cleanup = Cleanup()
    where = Where(kind, args.tmp, cleanup)
    try:
        work = local_dir(args.tmp, "bench-status-files-", cleanup)
        big = big_grid(work / "big.yaml", args.jobs)
        found: dict[str, float] = {}

        def add(what: str, seconds: list[float], target: float | None = None, note: str = "") -> None:
            value = found[what] = median(seconds)
            met = "" if target is None else ("yes" if value < target else "NO")
            digits = 3 if value >= 0.01 else 5
            rows.append([kind, what, len(seconds), f"{value:.{digits}f}",
                         f"{min(seconds):.{digits}f}-{max(seconds):.{digits}f}",
                         "" if target is None else f"< {target:g}", met, note])
            print(f"  {kind:8s} {what:42s} median {value:8.{digits}f}s  (n={len(seconds)}) {note}", flush=True)

        def goal(what: str, value: float, limit: float, unit: str) -> None:
            shown = f"{value:.2f}x" if unit == "x" else f"{value:.3f} s"
            goals.append([kind, what, shown, f"<= {limit:g}{'x' if unit == 'x' else ' s'}",
                          "met" if value <= limit else "NO"])

        for label, grid_file, n, reps in (("111", XVBC, 111, args.submit_repeat),
                                          (f"{args.jobs:,}", big, args.jobs, args.big_repeat)):
            if not reps:
                continue
            cli, store_call, parse, bare = [], [], [], []
            for _ in range(reps):
                cli_args, _opts = where.fresh()
                seconds, proc = timed([*MEMQ, *cli_args, "submit", str(grid_file)], cwd=REPO)
                assert f"{n} jobs added" in proc.stdout, proc.stdout
                cli.append(seconds)
                t0 = time.perf_counter()
                spec = load_grid(grid_file)
                parse.append(time.perf_counter() - t0)
                _cli_args, opts = where.fresh()
                store = open_store(opts, create=True)
                t0 = time.perf_counter()
                result = store.submit(spec)
                store_call.append(time.perf_counter() - t0)
                assert result.added == n, result
                store.backend.dispose()
                if n == args.jobs:
                    store = open_store(where.fresh()[1], create=True)
                    bare.append(bare_insert(store, spec))
                    store.backend.dispose()
            add(f"submit {label}: CLI end to end", cli, TARGETS["submit"])
            add(f"submit {label}: Store.submit alone", store_call)
            add(f"submit {label}: load_grid (parse+expand)", parse)
        add(f"bare insert {args.jobs:,}: one transaction", bare)

        # the big table: submitted once more (idempotent), then populated and queried
        cli_args, opts = where.fresh()
        timed([*MEMQ, *cli_args, "submit", str(big)], cwd=REPO)
        again, forced, again_store = [], [], []
        store = open_store(opts, create=False)
        digest = fingerprint(big, [])  # (what the CLI keeps: Store.submit without it would clear it)
        for _ in range(args.big_repeat):
            seconds, proc = timed([*MEMQ, *cli_args, "submit", str(big)], cwd=REPO)
            assert "unchanged since the last submit" in proc.stdout, proc.stdout
            again.append(seconds)
            seconds, proc = timed([*MEMQ, *cli_args, "submit", "--force", str(big)], cwd=REPO)
            assert "0 jobs added" in proc.stdout, proc.stdout
            forced.append(seconds)
            t0 = time.perf_counter()
            assert store.submit(spec, digest).added == 0
            again_store.append(time.perf_counter() - t0)
        add(f"resubmit {args.jobs:,} (nothing new): CLI", again, note="unchanged: not expanded")
        add(f"resubmit {args.jobs:,} --force: CLI", forced, note="expanded and validated again")
        add(f"resubmit {args.jobs:,} (nothing new): Store.submit", again_store)
        populate(store)
        counts, snaps, status, status_rich = [], [], [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            c = store.counts()
            counts.append(time.perf_counter() - t0)
            assert sum(c["big"].values()) == args.jobs, c
            t0 = time.perf_counter()
            snap = snapshot(store)
            snaps.append(time.perf_counter() - t0)
            assert len(snap["workers"]) == WORKERS, len(snap["workers"])
            status.append(timed([*MEMQ, *cli_args, "status", "--json"], cwd=REPO)[0])
            status_rich.append(timed([*MEMQ, *cli_args, "status"], cwd=REPO, env=_wide_env())[0])
        add(f"Store.counts() on {args.jobs:,} jobs", counts, TARGETS["counts"])
        add(f"dashboard.snapshot() on {args.jobs:,} jobs", snaps, TARGETS["snapshot"])
        add("memq status --json: CLI end to end", status, TARGETS["status --json"])
        add("memq status (rich table): CLI end to end", status_rich)
        add(*claim_latency(store, args.claims))
        store.backend.dispose()

        big_n = f"{args.jobs:,}"
        base = found[f"bare insert {big_n}: one transaction"]
        goal(f"submit {big_n}: Store.submit / bare insert", found[f"submit {big_n}: Store.submit alone"] / base, 2, "x")
        goal(f"submit {big_n}: CLI end to end / bare insert", found[f"submit {big_n}: CLI end to end"] / base, 2, "x")
        goal(f"resubmit {big_n} unchanged: CLI end to end", found[f"resubmit {big_n} (nothing new): CLI"], 0.5, "s")
        goal(f"status --json, {big_n} jobs, {WORKERS:,} workers: CLI",
             found["memq status --json: CLI end to end"], 0.2, "s")
        goal(f"status table, {big_n} jobs, {WORKERS:,} workers: CLI",
             found["memq status (rich table): CLI end to end"], 0.2, "s")
        goal("  the same, dashboard.snapshot() in process", found[f"dashboard.snapshot() on {big_n} jobs"], 0.2, "s")
    finally:
        cleanup.run()


def claim_latency(store: Any, n: int) -> tuple[str, list[float], None, str]:
    """Claim -> finish on the big table, one process; per-job seconds of n jobs in chunks of 50."""
    from memq.store.types import Capacity, Outcome

    me = store.register_worker("bench-claimer", "bench", 0, "bench", [], 1, 60.0)
    done, per_job = None, []
    for _ in range(max(n // 50, 1)):
        t0 = time.perf_counter()
        for _ in range(50):
            _, claim = store.claim(me, Capacity(slots=1), done)
            done = Outcome(claim.job_id, claim.attempt, "succeeded")
        per_job.append((time.perf_counter() - t0) / 50)
    store.finish(done)
    return "claim+finish, one process (per job)", per_job, None, f"{1 / median(per_job):.0f} jobs/s"


def _wide_env() -> dict[str, str]:
    import os

    return {**os.environ, "COLUMNS": "160"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="local,shared,postgres", help="local, shared, postgres, twohost")
    ap.add_argument("--jobs", type=int, default=100_000, help="size of the big grid (default 100000)")
    ap.add_argument("--submit-repeat", type=int, default=5,
                    help="submits of the 111-job grid (fresh queue each; 0: none; it needs the dinov2 weights "
                    "installed on the root, see `memq data weights`)")
    ap.add_argument("--big-repeat", type=int, default=2, help="submits of the big grid (fresh queue each)")
    ap.add_argument("--repeat", type=int, default=7, help="repetitions of each query and of --help")
    ap.add_argument("--claims", type=int, default=200, help="jobs claimed for the claim latency")
    ap.add_argument("--tmp", default=None, help="directory for local roots (default: $TMPDIR or /tmp)")
    args = ap.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    if "twohost" in backends and twohost_mounts() is None:
        print("two-host rig not mounted: skipping twohost")
        backends.remove("twohost")
    if "postgres" in backends and not pg_available():
        print("PostgreSQL not reachable: skipping postgres")
        backends.remove("postgres")
    print(f"submit/status: {machine_line()}")
    rows: list[list[Any]] = []
    goals: list[list[Any]] = []
    helps = [timed([*MEMQ, "--help"], cwd=REPO)[0] for _ in range(args.repeat)]
    rows.append(["-", "memq --help", len(helps), f"{median(helps):.3f}", f"{min(helps):.3f}-{max(helps):.3f}",
                 f"< {TARGETS['--help']:g}", "yes" if median(helps) < TARGETS["--help"] else "NO", ""])
    print(f"  memq --help median {median(helps):.3f}s", flush=True)
    # the floor under any `memq status`: the interpreter and the modules the command imports
    floor = [timed([sys.executable, "-c", STATUS_IMPORTS], cwd=REPO)[0] for _ in range(args.repeat)]
    rows.append(["-", "python + the imports of memq status", len(floor), f"{median(floor):.3f}",
                 f"{min(floor):.3f}-{max(floor):.3f}", "", "", "no query: the CLI's floor"])
    print(f"  python + the imports of memq status median {median(floor):.3f}s", flush=True)
    for kind in backends:
        try:
            bench_backend(kind, args, rows, goals)
        except Exception as exc:
            print(f"  {kind}: FAILED: {type(exc).__name__}: {exc}")
    print()
    print(table(["backend", "what", "n", "median s", "min-max s", "target", "met", "note"], rows))
    print()
    print(table(["backend", "issue 20 target", "found", "target", "met"], goals, title="targets (same run, medians)"))
    print(f"\nload average now {' '.join(f'{x:.2f}' for x in __import__('os').getloadavg())}")


if __name__ == "__main__":
    sys.exit(main())
