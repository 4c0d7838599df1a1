"""The worker's loop: claim what fits, start it, keep its leases, record how it ended.

The loop is single-threaded: it sleeps in a selector on the supervisors' pipes and a signal pipe,
and wakes for

* a supervisor's report (job started, exited, fenced) -> record the attempt's end and claim the
  next job in the same transaction; while jobs run for less than a second or so, one transaction
  claims several and records their ends together (memq/claim_ahead.py);
* the heartbeat timer (only while it runs jobs) -> one write renews all its leases, then every
  supervisor is told to renew; the reply says what was fenced, cancelled, or drained;
* the poll timer -> read the version and busy files (memq/store/base.py); heartbeat (to learn a
  drain request) and claim only when the version changed or a capped back-off expired, so idle
  workers cause no database transactions while nothing changes. Every claim that finds nothing it
  may run (wherever in the loop it happens) sets the claim timer to when the first backed-off job
  is due: a retry starts on time on any worker with room, whatever woke whom before;
* the reaper timer (memq/worker/reaper.py), while this worker or another runs jobs: a worker that
  starts running jobs after holding none bumps the busy file, which puts every idle worker back on
  watch (a version change alone does not: whoever claims what it announced bumps the busy file).
  A claim on the timer while idle (the safety poll, a retry due) looks at the others too: both
  files are hints that a writer killed between its commit and its bump leaves unbumped.

A database that cannot be reached (a PostgreSQL restart, an NFS error) does not stop the worker:
its jobs go on, what they ended with waits in memory, and the loop tries again after a pause. The
supervisors still fence their jobs once the lease has not been renewed for half its length.

(Over 400 lines on purpose: the loop and the state it keeps - running jobs, claimed-ahead jobs,
unrecorded outcomes, the claim timer - change together; what can be judged apart already lives
apart: launch, supervisor protocol, outcome policy, reaper, wake-ups, claim-ahead pacing, GPU pools,
GPU sharing.)
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import socket
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from memq.claim_ahead import ClaimAhead
from memq.host import boot_id
from memq.jobenv import JobEnv
from memq.store.errors import StoreUnavailable
from memq.store.store import Store
from memq.store.types import Capacity, Claim, Outcome, Running, WorkerRef
from memq.worker.config import WorkerConfig
from memq.worker.launch import ActiveJob, Supervised, Supervisors, start_job
from memq.worker.outcome import OutcomePolicy
from memq.worker.pools import GpuPools, hold_for
from memq.worker.protocol import Renew, Stop
from memq.worker.reaper import Reaper
from memq.worker.sharing import GpuUse, Sharing, shared_use, sharing_view
from memq.worker.wakeup import Wakeup

MAX_OUTAGE_PAUSE = 10.0
MIN_CLAIM_WAIT = 0.05  # seconds: a retry due now is claimed at once, but the loop never spins


@dataclass
class Timers:
    """When the loop next heartbeats, reaps and polls the version file (monotonic seconds), and what
    it saw last; the loop starts afresh with new ones after a database outage."""

    heartbeat: float
    reap: float
    poll: float
    idle_since: float
    version: Any = None
    busy: Any = None
    woken: bool = False  # the version file changed since the last claim
    announced_drain: bool = False


class Worker:
    def __init__(self, store: Store, config: WorkerConfig, *, gpu_filter: Any = None, nvml: Any = None,
                 out: TextIO = sys.stderr) -> None:
        config.check()
        self.store = store
        self.cfg = config
        self.out = out
        self.gpu_filter = gpu_filter  # callable(free GPU list) -> usable GPUs
        self.pools = GpuPools.of(config.gpus, config.multi_gpu)
        self.sharing = Sharing(self.pools, config.gpu_mem_gb, nvml)
        self.shown_sharing: Any = None  # what `memq status` was last told of this worker's shared GPUs
        self.held_for: int | None = None  # GPUs of the waiting job this worker holds its GPUs for
        self.jobs: dict[int, ActiveJob] = {}
        self.unrecorded: list[Outcome] = []  # ended attempts the store has not taken yet
        self.unrecorded_since: float | None = None  # when the oldest of them ended (monotonic)
        self.unrecorded_logs: dict[tuple[int, int], Path] = {}  # their job logs, to say if one was superseded
        self.ahead: list[Claim] = []  # claimed in an earlier transaction, not started yet
        self.pace = ClaimAhead(config.claim_ahead)
        self.policy = OutcomePolicy(config.retry_backoff, config.quarantine_after)
        self.reaper = Reaper(config.lease)
        self.claimed = 0
        self.draining: str | None = None
        self.drain_deadline: float | None = None
        self.stop_now = False
        self.ref: WorkerRef | None = None
        self.wakeup = Wakeup()
        self.supervisors = Supervisors(self.wakeup, close_timeout=config.kill_grace + 5)
        self.claim_at = 0.0  # when to claim next though the version file did not change (monotonic)

    # -- lifecycle -------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"{stamp} memq worker {self.cfg.name}: {message}", file=self.out, flush=True)

    def run(self) -> int:
        cfg = self.cfg
        self._register()
        multi = f", multi-GPU pool {','.join(map(str, cfg.multi_gpu))}" if cfg.multi_gpu else ""
        self.log(f"started (pid {os.getpid()}, GPUs {','.join(map(str, cfg.gpus)) or 'none'}{multi}, "
                 f"{cfg.slots} CPU slots, lease {cfg.lease:g}s)")
        pause = 1.0
        with self.wakeup.signals(self._on_signal), self.supervisors:
            while True:
                try:
                    code = self._loop()
                except StoreUnavailable as exc:
                    self.log(f"database unavailable ({exc.reason}): running jobs go on; trying again in {pause:g}s")
                    self._wait(pause)
                    pause = min(pause * 2, MAX_OUTAGE_PAUSE)
                    continue
                if code is not None:
                    return code
                self._rejoin()

    def _register(self) -> None:
        cfg = self.cfg
        self.ref = self.store.register_worker(cfg.name, socket.gethostname(), os.getpid(), boot_id(), cfg.gpus,
                                              cfg.slots, cfg.lease)

    def _rejoin(self) -> None:
        """Declared dead while it stalled: its jobs are killed and were rerun elsewhere, so nothing of
        this life is recorded; it serves on as the next incarnation of its name (a worker started by
        hand must not silently stop). The old incarnation stays fenced."""
        for job in self.jobs.values():
            self._forget(job)
        self.jobs.clear()
        self.ahead.clear()
        self.unrecorded.clear()
        self.unrecorded_logs.clear()
        self.unrecorded_since = None
        self._register()
        self.log(f"rejoined as incarnation {self.ref.incarnation}; serving on")

    def _wait(self, seconds: float) -> None:
        """Sleep ``seconds`` while still noticing signals and what the supervisors say."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self.stop_now:
            self._collect(self.wakeup.wait(left))

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.draining is None:
            self._drain(signal.Signals(signum).name)
        else:
            self.stop_now = True

    def _drain(self, why: str) -> None:
        self.draining = why
        self.drain_deadline = time.monotonic() + self.cfg.term_grace

    def _loop(self) -> int | None:
        """Serve until the worker should exit (its exit code), or None once it was declared dead."""
        now = time.monotonic()
        timers = Timers(heartbeat=now + self.cfg.heartbeat, reap=now + self.cfg.lease / 4, poll=now, idle_since=now)
        self.claim_at = now
        while True:
            now = time.monotonic()
            self._stop_when_asked(now, timers)
            self._settle(now)
            if not self._keep_leases(now, timers):
                return None
            if self._may_claim() and now >= self.claim_at:
                if not (self.jobs or timers.woken):  # a claim on the timer: a hint may have been missed
                    self.reaper.others_busy = True
                timers.woken = False
                # when full, the next claim comes with the end of a job; a dry claim moves this up
                self.claim_at = time.monotonic() + self._jittered(self.cfg.safety_poll)
                if self._claim_all():
                    timers.idle_since = time.monotonic()
            self._show_sharing()
            code = self._exit_code(timers)
            if code is not None:
                return code
            self._collect(self.wakeup.wait(max(0.0, self._next_deadline(timers) - time.monotonic())))

    def _stop_when_asked(self, now: float, timers: Timers) -> None:
        """Announce a drain once; requeue the running jobs once it is overdue or a second signal came."""
        if self.draining and not timers.announced_drain:
            timers.announced_drain = True
            self.log(f"{self.draining}: not claiming; running jobs have {self.cfg.term_grace:g}s to finish, "
                     "then go back to the queue (send the signal again to stop now)")
            self.store.set_worker_state(self.ref.id, "draining", self.draining)
        if self.stop_now or (self.draining and self.drain_deadline is not None and now >= self.drain_deadline):
            for job in self.jobs.values():
                self._end_job(job, "requeued", kill=True)
            self.drain_deadline = None

    def _settle(self, now: float) -> None:
        """Take in the supervisors' reports, judge the jobs that ended, start claimed-ahead jobs, and
        record the ended ones unless they may wait for the next claim."""
        self._collect(self.wakeup.wait(0))
        for job in [job for job in self.jobs.values() if job.result is not None]:
            self.pace.ran(now - job.started)
            self._pending(self._judge(job))
            self.unrecorded_logs[(job.claim.job_id, job.claim.attempt)] = job.log
            del self.jobs[job.claim.job_id]
            self.supervisors.release(job.supervisor)
        self._start_ahead()
        if self._must_record(now):
            self._exchange()

    def _keep_leases(self, now: float, timers: Timers) -> bool:
        """Heartbeat, reap and poll the version file when due; False once this worker was declared dead."""
        cfg = self.cfg
        if self.jobs and now >= timers.heartbeat:
            if not self._heartbeat():
                return False
            timers.heartbeat = now + cfg.heartbeat
        if now >= timers.reap and (self.jobs or self.reaper.others_busy):
            for line in self.reaper.reap(self.store, self.ref.id):
                self.log(line)
            timers.reap = now + cfg.lease / 4
        if now >= timers.poll:
            timers.poll = now + cfg.poll
            busy = self.store.busy_version()
            if busy != timers.busy:
                timers.busy = busy
                self.reaper.others_busy = True
            current = self.store.version()
            if current != timers.version:  # (whoever claims a job from it bumps the busy file)
                timers.version = current
                self.claim_at = now
                timers.woken = True
                return self._heartbeat()
        return True

    def _exit_code(self, timers: Timers) -> int | None:
        """0 when the worker should exit now (drained, --max-jobs, --idle-exit), else None."""
        if self.jobs:
            timers.idle_since = time.monotonic()
            return None
        if self.draining or self.stop_now:
            self._stopped("drained: exiting", "stopped", self.draining)
        elif self.cfg.max_jobs is not None and self.claimed >= self.cfg.max_jobs:
            self._stopped(f"ran {self.claimed} jobs (--max-jobs): exiting", "stopped", "max jobs")
        elif self.cfg.idle_exit is not None and time.monotonic() - timers.idle_since >= self.cfg.idle_exit:
            quarantined = self.policy.quarantined
            self._stopped(f"nothing to claim for {self.cfg.idle_exit:g}s: exiting", "stopped",
                          f"quarantined: {quarantined}" if quarantined else "idle")
        else:
            return None
        return 0

    def _stopped(self, message: str, state: str, why: str | None) -> None:
        self.log(message)
        self.store.set_worker_state(self.ref.id, state, why)

    def _next_deadline(self, timers: Timers) -> float:
        deadlines = [timers.poll, self.claim_at if self._may_claim() else timers.poll]
        if self.jobs:
            deadlines.append(timers.heartbeat)
        if self.jobs or self.reaper.others_busy:
            deadlines.append(timers.reap)
        if self.drain_deadline is not None:
            deadlines.append(self.drain_deadline)
        if self.unrecorded_since is not None:
            deadlines.append(self.unrecorded_since + self.cfg.claim_ahead)
        return min(deadlines)

    # -- claiming and starting -------------------------------------------------------------------

    def _busy_gpus(self) -> set[int]:
        return {g for job in self.jobs.values() for g in job.gpus}

    def _capacity(self) -> tuple[Capacity, list[int]]:
        free = [g for g in self.cfg.gpus if g not in self._busy_gpus()]
        if free and self.gpu_filter is not None:
            free = self.gpu_filter(free)
        slots = self.cfg.slots - sum(1 for job in self.jobs.values() if not job.gpus)
        capacity = self.pools.capacity(free, max(slots, 0), self.cfg.grids)
        return self.sharing.capacity(capacity, free, self._shared()), free

    def _shared(self) -> dict[int, GpuUse]:
        return shared_use((job.claim, job.gpus) for job in self.jobs.values())

    def _show_sharing(self) -> None:
        """Tell the store (for `memq status`) how this worker's GPUs are shared, when that changed."""
        view = sharing_view(self._shared())
        if view != self.shown_sharing:
            self.store.set_sharing(self.ref.id, view)
            self.shown_sharing = view

    def _may_claim(self) -> bool:
        if not self._may_start():
            return False
        return self.cfg.max_jobs is None or self.claimed < self.cfg.max_jobs

    def _may_start(self) -> bool:
        return not (self.draining or self.stop_now or self.policy.quarantined)

    def _claim_all(self) -> bool:
        """Claim until full or nothing fits; True if anything was claimed."""
        any_claimed = False
        while self._exchange():
            any_claimed = True
            if self.ahead:  # the rest waits for a free slot
                break
        return any_claimed

    def _ran_dry(self) -> None:
        """A claim found nothing this worker may run: claim again when the first backed-off job is
        due (the store's answer to that very claim), else after the safety period."""
        due = self.store.retry_in if self.store.retry_in is not None else self.cfg.safety_poll
        if self.held_for:  # look again soon (see _held)
            due = min(due, self.cfg.heartbeat)
        self.claim_at = time.monotonic() + self._jittered(min(due, self.cfg.safety_poll))

    def _jittered(self, seconds: float) -> float:
        """A little later, by at most one poll period, so that idle workers do not claim together."""
        return max(seconds, MIN_CLAIM_WAIT) + random.uniform(0.0, min(self.cfg.poll, 1.0))

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
        capacity, free = self._capacity()
        want = self._claim_limit() if self._may_claim() and not capacity.empty else 0
        if want:
            capacity = self._held(capacity, free)
            want = 0 if capacity.empty else want
        if not want and not self.unrecorded:
            return 0
        # from idle: no job held (one that just ended was heartbeating, so the others watch already)
        was_idle = not (self.jobs or self.ahead or self.unrecorded)
        accepted, claims = self.store.claim_many(self.ref, capacity, self.unrecorded, want)
        if claims and was_idle:
            self.store.announce_busy()
        if len(claims) < want:
            self._ran_dry()
        for done, ok in zip(self.unrecorded, accepted, strict=True):
            log = self.unrecorded_logs.pop((done.job_id, done.attempt), None)
            if not ok:
                self.log(f"job {done.job_id} attempt {done.attempt}: superseded; its result was not recorded")
                if log is not None:
                    with contextlib.suppress(OSError), log.open("a") as fh:
                        fh.write("# memq: superseded: another attempt replaced this one; its result was not recorded\n")
        self.unrecorded.clear()
        self.unrecorded_since = None
        self.claimed += len(claims)
        self.ahead.extend(claims)
        self._start_ahead()
        if claims and len(claims) == want and not self.ahead:
            self.claim_at = time.monotonic()  # more may fit: the end of a multi-GPU job frees several GPUs
        return len(claims)

    def _held(self, capacity: Capacity, free: list[int]) -> Capacity:
        """``capacity`` less its GPUs while a waiting multi-GPU job needs more than are free
        (--hold-for-multi-gpu, memq.worker.pools.hold_for)."""
        held = (hold_for(self.store, self.pools, free, set(free) | self._busy_gpus(), capacity)
                if self.cfg.hold_for_multi_gpu else None)
        if held != self.held_for:
            self.log(f"holding free GPUs for a waiting {held}-GPU job" if held else "no longer holding GPUs")
            self.held_for = held
        if not held:
            return capacity
        # look again within a heartbeat: another worker may take the job this one holds its GPUs for
        self.claim_at = min(self.claim_at, time.monotonic() + self._jittered(self.cfg.heartbeat))
        return replace(capacity, gpus=0, share=0.0, whole_share=False)  # shares too: they would keep a GPU busy

    def _start_ahead(self) -> None:
        """Start the claimed jobs that fit now. Those that cannot start go back uncharged: all of them
        when the worker stops claiming, and any that does not fit though nothing else runs here."""
        for claim in list(self.ahead):
            capacity, free = self._capacity()
            if capacity.empty or not self._may_start():
                break
            if not capacity.fits(claim.gpus, claim.gpu_share, claim.gpu_mem_gb):
                continue
            if claim.gpu_share:
                gpus = self.sharing.place(claim, free, self._shared())
            else:
                gpus = self.pools.pick(free, claim.gpus) if claim.gpus else []
            if gpus is not None:
                self.ahead.remove(claim)
                self._start(claim, gpus)
        if self.ahead and (not self._may_start() or not self.jobs):
            why = "worker stopped before starting it" if not self._may_start() else "its GPUs were taken here"
            for claim in self.ahead:
                self._pending(Outcome(claim.job_id, claim.attempt, "requeued", reason=why))
            self.ahead.clear()

    @functools.cached_property
    def _inherited(self) -> dict[str, str]:
        """Every job's environment before its own variables: the worker's, and what opens the store."""
        return {**os.environ, **self.store.job_env()}

    def _start(self, claim: Claim, gpus: list[int]) -> None:
        cfg = self.cfg
        env = JobEnv.of_claim(claim, self.store.root, cfg.scratch, gpus, sync=cfg.sync_checkpoints)
        self.jobs[claim.job_id] = start_job(claim, gpus, env, self._inherited, self.supervisors, worker=cfg.name,
                                            fence_after=cfg.lease / 2, kill_grace=cfg.kill_grace)
        self.log(f"job {claim.job_id} attempt {claim.attempt} ({claim.grid}/{claim.group}) started"
                 + (f" on GPUs {','.join(map(str, gpus))}" if gpus else ""))

    # -- supervisors -----------------------------------------------------------------------------

    def _collect(self, ready: list[tuple[Any, Supervised]]) -> None:
        """Read what supervisors said; mark the jobs that ended (or whose supervisor died)."""
        for _, supervisor in ready:
            reports = supervisor.read()
            if supervisor.job is not None:
                supervisor.job.take(reports)
            elif reports is None:  # an idle one exited
                self.supervisors.drop(supervisor)

    def _end_job(self, job: ActiveJob, why: str, *, kill: bool) -> None:
        """Ask a job's supervisor to stop it; ``why`` decides how its end is recorded."""
        if job.ending is None or why == "fenced":
            job.ending = why
        job.supervisor.send(Stop(why, kill=kill))

    def _judge(self, job: ActiveJob) -> Outcome:
        verdict = self.policy.judge(job.claim, job.result, ending=job.ending, elapsed=time.monotonic() - job.started,
                                    log=job.log)
        self.log(verdict.note)
        if verdict.quarantine:
            self.log(f"quarantined: {verdict.quarantine}; claiming nothing more (restart the worker to lift it)")
            self.store.set_worker_state(self.ref.id, "quarantined", verdict.quarantine)
        return verdict.outcome

    # -- liveness --------------------------------------------------------------------------------

    def _heartbeat(self) -> bool:
        """Renew all leases with one write; False when this worker was declared dead."""
        # every attempt this worker holds, ended ones included until the store has their outcome
        running = [Running(job.claim.job_id, job.claim.attempt) for job in self.jobs.values()]
        running += [Running(c.job_id, c.attempt) for c in self.ahead]
        running += [Running(done.job_id, done.attempt) for done in self.unrecorded]
        reply = self.store.heartbeat(self.ref, running)
        if not reply.alive:
            self.log("declared dead by another worker (no heartbeat within the lease): killing my jobs; "
                     "their attempts were given to other workers")
            for job in self.jobs.values():
                self._end_job(job, "fenced", kill=True)
            self.ahead.clear()
            return False
        self._obey(set(reply.fenced), set(reply.cancel))
        if reply.drain and not self.draining:
            self._drain("drain requested")
        return True

    def _obey(self, fenced: set[tuple[int, int]], cancel: set[int]) -> None:
        """Drop or kill the attempts given to other workers, stop the cancelled jobs, renew the rest."""
        for claim in list(self.ahead):
            if (claim.job_id, claim.attempt) in fenced:
                self.ahead.remove(claim)
            elif claim.job_id in cancel:
                self.ahead.remove(claim)
                self._pending(Outcome(claim.job_id, claim.attempt, "cancelled", reason="cancelled"))
        for job in self.jobs.values():
            key = (job.claim.job_id, job.claim.attempt)
            if key in fenced:
                self.log(f"job {key[0]} attempt {key[1]} was given to another worker: killing it")
                self._end_job(job, "fenced", kill=True)
            elif job.claim.job_id in cancel:
                self._end_job(job, "cancelled", kill=False)
            else:
                job.supervisor.send(Renew())
        for job_id in [k for k, j in self.jobs.items() if j.ending == "fenced"]:
            self._forget(self.jobs.pop(job_id))

    def _forget(self, job: ActiveJob) -> None:
        """A fenced job: nothing of it is recorded; its supervisor, killing it, is ended (not reused)."""
        self.supervisors.drop(job.supervisor)
