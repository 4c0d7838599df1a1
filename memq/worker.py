"""`memq worker`: one per node; claims jobs that fit its free GPUs and slots and runs them.

Each job runs under a supervisor process (memq/supervisor.py) that kills it when the worker dies
or stalls, so an attempt never outlives the lease that protects it. The loop is single-threaded:
it sleeps in a selector on the supervisors' pipes and a signal pipe, and wakes for

* a supervisor's message (job started, exited, fenced) -> record the attempt's end and claim the
  next job in the same transaction; while jobs run for less than a second or so, one transaction
  claims several and records their ends together (memq/claim_ahead.py);
* the heartbeat timer (only while it runs jobs) -> one write renews all its leases, then every
  supervisor is told `renew`; the reply says what was fenced, cancelled, or drained;
* the poll timer -> stat the version file; claim only when it changed or a capped back-off
  expired, so idle workers cause no database transactions;
* the reaper timer -> read other workers' heartbeat counters and declare dead those whose counter
  did not move for LEASE seconds on this host's monotonic clock.

A database that cannot be reached (a PostgreSQL restart, an NFS error) does not stop the worker:
its jobs go on, what they ended with waits in memory, and the loop tries again after a pause. The
supervisors still fence their jobs once the lease has not been renewed for half its length.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa

from memq.claim_ahead import WINDOW, ClaimAhead
from memq.lock import boot_id
from memq.root import job_dir
from memq.store.store import Store
from memq.store.types import Capacity, Claim, Outcome, Running, WorkerRef
from memq.template import render

EXIT_PERMANENT = 78  # a job that says retrying cannot help (memq.runner uses it too)
EXIT_LOST_LEASE = 3


def default_scratch() -> Path:
    """Node-local scratch: $MEMQ_SCRATCH, else a private directory under $TMPDIR (or /tmp)."""
    if os.environ.get("MEMQ_SCRATCH"):
        return Path(os.environ["MEMQ_SCRATCH"])
    import tempfile

    path = Path(tempfile.gettempdir()) / f"memq-scratch-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    if path.is_symlink() or path.stat().st_uid != os.getuid():
        from memq.errors import UserError

        raise UserError("scratch directory is not ours", where=str(path), hint="set MEMQ_SCRATCH or --scratch")
    return path


# Store errors that mean "not now" rather than a bug: lost connections, I/O errors, a locked file.
DB_UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError)
MAX_OUTAGE_PAUSE = 10.0

@dataclass
class WorkerConfig:
    name: str
    gpus: list[int] = field(default_factory=list)
    slots: int = 1
    max_jobs: int | None = None
    idle_exit: float | None = None
    poll: float = 1.0
    heartbeat: float = 10.0
    lease: float = 60.0
    grids: tuple[str, ...] = ()
    scratch: Path = field(default_factory=lambda: default_scratch())
    term_grace: float = 30.0  # SIGTERM/drain: how long running jobs may finish before requeue
    kill_grace: float = 10.0  # SIGTERM to a job's process group -> SIGKILL
    retry_backoff: float = 30.0
    quarantine_after: int = 5
    safety_poll: float = 600.0  # claim anyway this often: a version bump is a hint and can be missed
    sync_checkpoints: bool = True  # jobs copy their checkpoints to the shared store when they succeed
    claim_ahead: float = WINDOW  # seconds of short jobs one transaction may claim (0: one job at a time)

    def check(self) -> None:
        from memq.errors import UserError

        if self.heartbeat * 4 > self.lease:
            raise UserError(f"--heartbeat {self.heartbeat:g} is too long for --lease {self.lease:g}",
                            hint="the lease must cover at least four heartbeats")
        if self.slots < 0 or (not self.gpus and self.slots == 0):
            raise UserError("this worker could run nothing", where="--slots", hint="give --slots N or GPUs")
        if self.claim_ahead < 0:
            raise UserError("--claim-ahead must be 0 or more seconds", hint="0 claims one job at a time")


@dataclass
class ActiveJob:
    """A job this worker runs: its claim, its GPUs and its supervisor."""

    claim: Claim
    gpus: list[int]
    proc: Any  # subprocess.Popen of the supervisor
    started: float
    buffer: bytes = b""
    pid: int | None = None
    ending: str | None = None  # requeued | cancelled | fenced, when we stop it ourselves
    result: str | None = None  # the supervisor's last word


class Worker:
    def __init__(self, store: Store, config: WorkerConfig, *, gpu_filter: Any = None,
                 out: TextIO = sys.stderr) -> None:
        config.check()
        self.store = store
        self.cfg = config
        self.out = out
        self.gpu_filter = gpu_filter  # callable(free GPU list) -> usable GPUs
        self.jobs: dict[int, ActiveJob] = {}
        self.unrecorded: list[Outcome] = []  # ended attempts the store has not taken yet
        self.unrecorded_since: float | None = None  # when the oldest of them ended (monotonic)
        self.ahead: list[Claim] = []  # claimed in an earlier transaction, not started yet
        self.pace = ClaimAhead(config.claim_ahead)
        self.claimed = 0
        self.failures_in_a_row = 0
        self.draining: str | None = None
        self.drain_deadline: float | None = None
        self.quarantined: str | None = None  # why, once quarantined
        self.stop_now = False
        self.ref: WorkerRef | None = None
        self.seen: dict[int, tuple[int, float]] = {}  # other worker -> (counter, when it last moved)
        self.others_busy = True
        self.sel = selectors.DefaultSelector()

    # -- lifecycle -------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"{stamp} memq worker {self.cfg.name}: {message}", file=self.out, flush=True)

    def run(self) -> int:
        cfg = self.cfg
        self.ref = self.store.register_worker(cfg.name, socket.gethostname(), os.getpid(), boot_id(), cfg.gpus,
                                              cfg.slots, cfg.lease)
        self.log(f"started (pid {os.getpid()}, GPUs {','.join(map(str, cfg.gpus)) or 'none'}, "
                 f"{cfg.slots} CPU slots, lease {cfg.lease:g}s)")
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        self.sel.register(wake_r, selectors.EVENT_READ, None)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            pause = 1.0
            while True:
                try:
                    code = self._loop(wake_r)
                    break
                except DB_UNAVAILABLE as exc:
                    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                    self.log(f"database unavailable ({detail}): running jobs go on; trying again in {pause:g}s")
                    self._wait(wake_r, pause)
                    pause = min(pause * 2, MAX_OUTAGE_PAUSE)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return code

    def _wait(self, wake_r: int, seconds: float) -> None:
        """Sleep ``seconds`` while still noticing signals and what the supervisors say."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self.stop_now:
            self._sleep(wake_r, left)

    def _sleep(self, wake_r: int, timeout: float) -> None:
        """Wait up to ``timeout`` for a signal or a supervisor's message, and take in the messages."""
        events = self.sel.select(timeout=timeout)
        for key, _ in events:
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
        self._collect(events)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.draining is None:
            self.draining = signal.Signals(signum).name
            self.drain_deadline = time.monotonic() + self.cfg.term_grace
        else:
            self.stop_now = True

    def _loop(self, wake_r: int) -> int:
        cfg = self.cfg
        now = time.monotonic()
        next_heartbeat = now + cfg.heartbeat
        next_reap = now + cfg.lease / 4
        next_poll = now
        next_claim = now
        version = None
        idle_since = now
        announced_drain = False
        while True:
            now = time.monotonic()
            if self.draining and not announced_drain:
                announced_drain = True
                self.log(f"{self.draining}: not claiming; running jobs have {cfg.term_grace:g}s to finish, "
                         "then go back to the queue (send the signal again to stop now)")
                self.store.set_worker_state(self.ref.id, "draining", self.draining)
            if self.stop_now or (self.draining and self.drain_deadline is not None and now >= self.drain_deadline):
                for job in self.jobs.values():
                    self._end_job(job, "requeued", "kill")
                self.drain_deadline = None
            self._collect(self.sel.select(timeout=0))
            for job in [job for job in self.jobs.values() if job.result is not None]:
                self.pace.ran(now - job.started)
                self._pending(self._outcome(job))
                del self.jobs[job.claim.job_id]
            self._start_ahead()
            if self._must_record(now):
                self._exchange()
            if self.jobs and now >= next_heartbeat:
                if not self._heartbeat():
                    return EXIT_LOST_LEASE
                next_heartbeat = now + cfg.heartbeat
            if now >= next_reap and (self.jobs or self.others_busy):
                self._reap()
                next_reap = now + cfg.lease / 4
            if now >= next_poll:
                next_poll = now + cfg.poll
                current = self.store.version()
                if current != version:
                    version = current
                    next_claim = now
                    self.others_busy = True
                    if not self._heartbeat():
                        return EXIT_LOST_LEASE
            if self._may_claim() and now >= next_claim:
                if self._claim_all():
                    idle_since = time.monotonic()
                next_claim = time.monotonic() + self._claim_timer()
            if self.jobs:
                idle_since = time.monotonic()
            elif self.draining or self.stop_now:
                self.log("drained: exiting")
                self.store.set_worker_state(self.ref.id, "stopped", self.draining)
                return 0
            elif self.cfg.max_jobs is not None and self.claimed >= self.cfg.max_jobs:
                self.log(f"ran {self.claimed} jobs (--max-jobs): exiting")
                self.store.set_worker_state(self.ref.id, "stopped", "max jobs")
                return 0
            elif cfg.idle_exit is not None and time.monotonic() - idle_since >= cfg.idle_exit:
                self.log(f"nothing to claim for {cfg.idle_exit:g}s: exiting")
                self.store.set_worker_state(self.ref.id, "stopped",
                                            f"quarantined: {self.quarantined}" if self.quarantined else "idle")
                return 0
            deadlines = [next_poll, next_claim if self._may_claim() else next_poll]
            if self.jobs:
                deadlines.append(next_heartbeat)
            if self.jobs or self.others_busy:
                deadlines.append(next_reap)
            if self.drain_deadline is not None:
                deadlines.append(self.drain_deadline)
            if self.unrecorded_since is not None:
                deadlines.append(self.unrecorded_since + cfg.claim_ahead)
            self._sleep(wake_r, max(0.0, min(deadlines) - time.monotonic()))

    # -- claiming and starting -------------------------------------------------------------------

    def _busy_gpus(self) -> set[int]:
        return {g for job in self.jobs.values() for g in job.gpus}

    def _capacity(self) -> tuple[Capacity, list[int]]:
        free = [g for g in self.cfg.gpus if g not in self._busy_gpus()]
        if free and self.gpu_filter is not None:
            free = self.gpu_filter(free)
        slots = self.cfg.slots - sum(1 for job in self.jobs.values() if not job.gpus)
        return Capacity(gpus=len(free), slots=max(slots, 0), grids=self.cfg.grids), free

    def _may_claim(self) -> bool:
        if not self._may_start():
            return False
        return self.cfg.max_jobs is None or self.claimed < self.cfg.max_jobs

    def _may_start(self) -> bool:
        return not (self.draining or self.stop_now or self.quarantined)

    def _claim_all(self) -> bool:
        """Claim until full or nothing fits; True if anything was claimed."""
        any_claimed = False
        while self._exchange():
            any_claimed = True
            if self.ahead:  # the rest waits for a free slot
                break
        return any_claimed

    def _claim_timer(self) -> float:
        """Seconds until the next claim not prompted by the version file: when the first backed-off
        job becomes due, else a long safety period; jittered so idle workers do not fire together."""
        wait = min(self.store.retry_in if self.store.retry_in is not None else self.cfg.safety_poll,
                   self.cfg.safety_poll)
        return max(wait, self.cfg.poll) * random.uniform(1.0, 1.2)

    def _pending(self, done: Outcome) -> None:
        """An attempt ended: its outcome waits for the next transaction."""
        if not self.unrecorded:
            self.unrecorded_since = time.monotonic()
        self.unrecorded.append(done)

    def _must_record(self, now: float) -> bool:
        """Record ended attempts now, or let them wait for the transaction that claims again? They
        wait only while claimed-ahead jobs run, and at most --claim-ahead seconds."""
        if not self.unrecorded:
            return False
        if not self.ahead or not self._may_start():
            return True
        return now - (self.unrecorded_since or now) >= self.cfg.claim_ahead

    def _claim_limit(self) -> int:
        want = max(0, self.pace.batch() - len(self.ahead))
        if self.cfg.max_jobs is not None:
            want = min(want, self.cfg.max_jobs - self.claimed)
        return want

    def _exchange(self) -> int:
        """One transaction: record every ended attempt and claim what fits the free capacity (several
        jobs when recent jobs were short); start what can start. Returns how many were claimed."""
        capacity, _ = self._capacity()
        want = self._claim_limit() if self._may_claim() and not capacity.empty else 0
        if not want and not self.unrecorded:
            return 0
        accepted, claims = self.store.claim_many(self.ref, capacity, self.unrecorded, want)
        for done, ok in zip(self.unrecorded, accepted, strict=True):
            if not ok:
                self.log(f"job {done.job_id} attempt {done.attempt}: superseded; its result was not recorded")
        self.unrecorded.clear()
        self.unrecorded_since = None
        self.claimed += len(claims)
        self.ahead.extend(claims)
        self._start_ahead()
        return len(claims)

    def _start_ahead(self) -> None:
        """Start the claimed jobs that fit now. Those that cannot start go back uncharged: all of them
        when the worker stops claiming, and any that does not fit though nothing else runs here."""
        for claim in list(self.ahead):
            capacity, free = self._capacity()
            if capacity.empty or not self._may_start():
                break
            if capacity.fits(claim.gpus):
                self.ahead.remove(claim)
                self._start(claim, free[:claim.gpus])
        if self.ahead and (not self._may_start() or not self.jobs):
            why = "worker stopped before starting it" if not self._may_start() else "its GPUs were taken here"
            for claim in self.ahead:
                self._pending(Outcome(claim.job_id, claim.attempt, "requeued", reason=why))
            self.ahead.clear()

    def _start(self, claim: Claim, gpus: list[int]) -> None:
        import subprocess

        cfg = self.cfg
        shared = job_dir(self.store.root, claim.grid, claim.job_id, claim.attempt)
        scratch = cfg.scratch / claim.grid / str(claim.job_id) / f"attempt-{claim.attempt}"
        shared.mkdir(parents=True, exist_ok=True)
        scratch.mkdir(parents=True, exist_ok=True)
        env = self._job_env(claim, gpus, shared, scratch)
        if claim.command is not None:
            values = {**claim.params, "grid": claim.grid, "group": claim.group, "repeat": claim.repeat,
                      "job_id": claim.job_id, "attempt": claim.attempt, "job_dir": str(shared),
                      "scratch_dir": str(scratch)}
            argv = render(claim.command, values)
        else:
            argv = [sys.executable, "-m", "memq.runner"]
        spec = {"argv": argv, "env": env, "cwd": str(shared), "log": str(shared / "log.txt"),
                "fence_after": cfg.lease / 2, "term_grace": cfg.kill_grace,
                "header": f"# memq: job {claim.job_id} attempt {claim.attempt} on {socket.gethostname()} "
                          f"(worker {cfg.name}, GPUs {','.join(map(str, gpus)) or 'none'}) "
                          f"at {time.strftime('%Y-%m-%d %H:%M:%S')}"}
        proc = subprocess.Popen([sys.executable, "-m", "memq.supervisor"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        proc.stdin.write(json.dumps(spec).encode() + b"\n")
        proc.stdin.flush()
        os.set_blocking(proc.stdout.fileno(), False)
        job = ActiveJob(claim, gpus, proc, time.monotonic())
        self.jobs[claim.job_id] = job
        self.sel.register(proc.stdout, selectors.EVENT_READ, job)
        self.log(f"job {claim.job_id} attempt {claim.attempt} ({claim.grid}/{claim.group}) started"
                 + (f" on GPUs {','.join(map(str, gpus))}" if gpus else ""))

    def _job_env(self, claim: Claim, gpus: list[int], shared: Path, scratch: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "MEMQ_JOB_ID": str(claim.job_id), "MEMQ_ATTEMPT": str(claim.attempt), "MEMQ_JOB_KEY": claim.key,
            "MEMQ_GRID": claim.grid, "MEMQ_GROUP": claim.group, "MEMQ_KIND": claim.kind,
            "MEMQ_REPEAT": str(claim.repeat), "MEMQ_PARAMS": json.dumps(claim.params),
            "MEMQ_JOB_DIR": str(shared), "MEMQ_SCRATCH_DIR": str(scratch), "MEMQ_ROOT": str(self.store.root),
            "MEMQ_GPUS": ",".join(map(str, gpus)), "MEMQ_FROM_SCRATCH": "1" if claim.from_scratch else "0",
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)), "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "PYTHONUNBUFFERED": "1", "MEMQ_SYNC": "1" if self.cfg.sync_checkpoints else "0",
        })
        # A job gets the CPU threads it asked for (resources.cpus): numerical libraries default to
        # one thread per core each, and two CPU jobs spinning on two cores ran >10x slower.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
            env[var] = str(max(claim.cpus, 1))
        if self.store.backend.dialect == "postgresql":
            env["MEMQ_DB"] = self.store.backend.engine.url.render_as_string(hide_password=False)
        for name, value in claim.params.items():
            key = "MEMQ_PARAM_" + "".join(c if c.isalnum() else "_" for c in name).upper()
            env[key] = value if isinstance(value, str) else json.dumps(value)
        return env

    # -- supervisors -----------------------------------------------------------------------------

    def _collect(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        """Read what supervisors said; mark jobs whose supervisor is done."""
        for key, _ in events:
            job = key.data
            if not isinstance(job, ActiveJob):
                continue
            try:
                chunk = os.read(key.fd, 4096)
            except BlockingIOError:
                continue
            job.buffer += chunk
            while b"\n" in job.buffer:
                line, job.buffer = job.buffer.split(b"\n", 1)
                word, _, rest = line.decode().partition(" ")
                if word == "started":
                    job.pid = int(rest)
                else:
                    job.result = line.decode()
            if not chunk:
                self.sel.unregister(key.fileobj)
                job.proc.wait()
                if job.result is None:
                    job.result = f"supervisor died ({job.proc.returncode})"

    def _end_job(self, job: ActiveJob, why: str, how: str = "term") -> None:
        """Ask a job's supervisor to stop it; ``why`` decides how its end is recorded."""
        if job.ending is None or why == "fenced":
            job.ending = why
        with contextlib.suppress(BrokenPipeError, ValueError, OSError):
            job.proc.stdin.write(f"{how} {why}\n".encode())
            job.proc.stdin.flush()

    def _outcome(self, job: ActiveJob) -> Outcome:
        c = job.claim
        result = job.result or ""
        elapsed = time.monotonic() - job.started
        word, _, rest = result.partition(" ")
        code = None
        if word == "exit":
            code = int(rest)
        elif word == "killed":
            code = int(rest.rsplit(" ", 1)[-1])
        if job.ending == "requeued" or word == "fenced":
            why = "worker stopped" if job.ending == "requeued" else "lease not renewed in time (worker stalled)"
            self.log(f"job {c.job_id} attempt {c.attempt}: stopped, back to the queue ({why})")
            return Outcome(c.job_id, c.attempt, "requeued", exit_code=code, reason=why)
        if job.ending == "cancelled":
            self.log(f"job {c.job_id} attempt {c.attempt}: cancelled")
            return Outcome(c.job_id, c.attempt, "cancelled", exit_code=code, reason="cancelled")
        if code == 0:
            self.failures_in_a_row = 0
            self.log(f"job {c.job_id} attempt {c.attempt}: succeeded in {elapsed:.1f}s")
            return Outcome(c.job_id, c.attempt, "succeeded", exit_code=0)
        reason = (f"exit code {code}" if code is not None and code >= 0 else
                  f"killed by signal {-code}" if code is not None else result)
        self.failures_in_a_row += 1
        self.log(f"job {c.job_id} attempt {c.attempt}: failed ({reason}); log: "
                 f"{job_dir(self.store.root, c.grid, c.job_id, c.attempt) / 'log.txt'}")
        if self.failures_in_a_row >= self.cfg.quarantine_after and not self.quarantined:
            self.quarantined = f"{self.failures_in_a_row} job failures in a row (last: job {c.job_id}, {reason})"
            self.log(f"quarantined: {self.quarantined}; claiming nothing more (restart the worker to lift it)")
            self.store.set_worker_state(self.ref.id, "quarantined", self.quarantined)
        failures = c.attempt  # back-off grows with each attempt of this job
        backoff = 0.0 if code == EXIT_PERMANENT else self.cfg.retry_backoff * 2 ** min(failures - 1, 6)
        state = "failed_final" if code == EXIT_PERMANENT else "failed"
        return Outcome(c.job_id, c.attempt, state, exit_code=code, reason=reason, backoff=backoff)

    # -- liveness --------------------------------------------------------------------------------

    def _heartbeat(self) -> bool:
        """Renew all leases with one write; False when this worker was declared dead."""
        # every attempt this worker holds, ended ones included until the store has their outcome
        running = [Running(job.claim.job_id, job.claim.attempt) for job in self.jobs.values()]
        running += [Running(c.job_id, c.attempt) for c in self.ahead]
        running += [Running(done.job_id, done.attempt) for done in self.unrecorded]
        reply = self.store.heartbeat(self.ref, running)
        if not reply.alive:
            self.log("declared dead by another worker (no heartbeat within the lease): killing my jobs "
                     "and standing down")
            for job in self.jobs.values():
                self._end_job(job, "fenced", "kill")
            self.ahead.clear()
            return False
        fenced = set(reply.fenced)
        for claim in list(self.ahead):
            if (claim.job_id, claim.attempt) in fenced:
                self.ahead.remove(claim)
            elif claim.job_id in reply.cancel:
                self.ahead.remove(claim)
                self._pending(Outcome(claim.job_id, claim.attempt, "cancelled", reason="cancelled"))
        for job in self.jobs.values():
            key = (job.claim.job_id, job.claim.attempt)
            if key in fenced:
                self.log(f"job {key[0]} attempt {key[1]} was given to another worker: killing it")
                self._end_job(job, "fenced", "kill")
            elif job.claim.job_id in reply.cancel:
                self._end_job(job, "cancelled", "term")
            else:
                with contextlib.suppress(BrokenPipeError, ValueError, OSError):
                    job.proc.stdin.write(b"renew\n")
                    job.proc.stdin.flush()
        for job_id in [k for k, j in self.jobs.items() if j.ending == "fenced"]:
            self._forget(self.jobs.pop(job_id))
        if reply.drain and not self.draining:
            self.draining = "drain requested"
            self.drain_deadline = time.monotonic() + self.cfg.term_grace
        return True

    def _forget(self, job: ActiveJob) -> None:
        """A fenced job: its supervisor is killing it; nothing of it is recorded."""
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(job.proc.stdout)
        with contextlib.suppress(Exception):
            job.proc.wait(timeout=self.cfg.kill_grace + 5)

    def _reap(self) -> None:
        """Declare dead the workers whose heartbeat counter stood still for a whole lease."""
        now = time.monotonic()
        observed = self.store.worker_heartbeats()
        self.others_busy = any(n for wid, (_, _, n) in observed.items() if wid != self.ref.id)
        for wid, (counter, _state, n_running) in observed.items():
            if wid == self.ref.id:
                continue
            seen = self.seen.get(wid)
            if seen is None or seen[0] != counter:
                self.seen[wid] = (counter, now)
                continue
            if n_running and now - seen[1] >= self.cfg.lease:
                requeued = self.store.declare_dead(wid, counter)
                if requeued:
                    self.log(f"worker {wid} missed its lease: requeued jobs {', '.join(map(str, requeued))}")
                self.seen.pop(wid, None)
