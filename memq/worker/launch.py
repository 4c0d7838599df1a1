"""Starting a claimed job: its directories, its environment and argv, and the supervisor process
that runs it (memq.worker.supervisor, reused from job to job); then the worker's end of that
supervisor's pipes."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from memq.jobenv import JobEnv
from memq.paths import LOG
from memq.store.types import Claim
from memq.template import render
from memq.worker.protocol import Command, Launch, LineReader, Message, Report, Started, encode
from memq.worker.wakeup import Wakeup


def launch_message(env: JobEnv, command: list[str] | None, inherited: Mapping[str, str], *, fence_after: float,
                   kill_grace: float, header: str) -> Launch:
    """How the supervisor runs the attempt ``env``: ``command`` rendered, or a Python kind's runner."""
    argv = render(command, env.template_values()) if command is not None else [sys.executable, "-m", "memq.runner"]
    return Launch(argv=argv, env={**inherited, **env.to_env()}, cwd=str(env.job_dir), log=str(env.job_dir / LOG),
                  fence_after=fence_after, term_grace=kill_grace, header=header)


class Supervised:
    """A supervisor process (memq.worker.supervisor): send it commands, read its reports (its stdout
    is non-blocking). It runs one job at a time, ``job``, and many in its life."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "memq.worker.supervisor"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        os.set_blocking(self.stdout.fileno(), False)
        self._reports = LineReader()
        self.job: ActiveJob | None = None
        self.gone = False  # its stdout reached EOF: it exited

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def send(self, command: Command) -> None:
        """Write a command; a supervisor that is gone hears nothing (its report says how it ended)."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ValueError, OSError):
            self.proc.stdin.write(encode(command))
            self.proc.stdin.flush()

    def read(self) -> list[Message] | None:
        """The reports it wrote since the last read; None once its stdout is closed."""
        try:
            chunk = os.read(self.stdout.fileno(), 65536)
        except BlockingIOError:
            return []
        self.gone = not chunk
        reports = self._reports.feed(chunk)
        return reports if chunk else None

    def close(self, timeout: float) -> None:
        """End it and wait: EOF on its stdin makes it kill the job it runs, if any, and exit."""
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # the job's first process dies with it (its PDEATHSIG)
            self.proc.kill()
            self.proc.wait()
        self.stdout.close()


class Supervisors:
    """A worker's supervisor processes: an idle one runs the next job, a new one starts only when
    none is idle, so a worker keeps at most as many as it ran jobs at once. Used as a context, it
    ends the idle ones on the way out."""

    def __init__(self, wakeup: Wakeup, close_timeout: float) -> None:
        self.wakeup = wakeup
        self.close_timeout = close_timeout
        self.idle: list[Supervised] = []

    def take(self) -> Supervised:
        while self.idle:
            supervisor = self.idle.pop()
            if supervisor.proc.poll() is None:
                return supervisor
            self.drop(supervisor)
        supervisor = Supervised()
        self.wakeup.watch(supervisor.stdout, supervisor)
        return supervisor

    def release(self, supervisor: Supervised) -> None:
        """Its job ended and it said so: it waits for the next one (unless it is gone)."""
        supervisor.job = None
        if supervisor.gone:
            self.drop(supervisor)
        else:
            self.idle.append(supervisor)

    def drop(self, supervisor: Supervised) -> None:
        """End it (a job it still runs is killed) and wait for it."""
        self.wakeup.forget(supervisor.stdout)
        if supervisor in self.idle:
            self.idle.remove(supervisor)
        supervisor.close(self.close_timeout)

    def __enter__(self) -> Supervisors:
        return self

    def __exit__(self, *_exc: object) -> None:
        for supervisor in list(self.idle):
            self.drop(supervisor)


@dataclass(frozen=True)
class Gone:
    """The supervisor exited without a last word."""

    returncode: int

    def __str__(self) -> str:
        return f"supervisor died ({self.returncode})"


@dataclass
class ActiveJob:
    """A job this worker runs: its claim, its GPUs and its supervisor."""

    claim: Claim
    gpus: list[int]
    supervisor: Supervised
    log: Path
    started: float = field(default_factory=time.monotonic)
    pid: int | None = None
    ending: str | None = None  # requeued | cancelled | fenced, when we stop it ourselves
    result: Report | Gone | None = None  # the supervisor's last word

    def take(self, reports: list[Message] | None) -> None:
        """What the supervisor said; ``None``: it is done."""
        for report in reports or []:
            if isinstance(report, Started):
                self.pid = report.pid
            elif isinstance(report, Report):
                self.result = report
        if reports is None:
            code = self.supervisor.proc.wait()
            if self.result is None:
                self.result = Gone(code)


def start_job(claim: Claim, gpus: list[int], env: JobEnv, inherited: Mapping[str, str], supervisors: Supervisors, *,
              worker: str, fence_after: float, kill_grace: float) -> ActiveJob:
    """Make the attempt's directories and hand it to an idle supervisor (or a new one); the job's
    environment is ``inherited`` (the worker's, and what opens its store) and ``env``'s variables."""
    env.make_dirs()
    header = (f"# memq: job {claim.job_id} attempt {claim.attempt} on {socket.gethostname()} "
              f"(worker {worker}, GPUs {','.join(map(str, gpus)) or 'none'}) at {time.strftime('%Y-%m-%d %H:%M:%S')}")
    launch = launch_message(env, claim.command, inherited, fence_after=fence_after,
                            kill_grace=kill_grace, header=header)
    supervisor = supervisors.take()
    job = supervisor.job = ActiveJob(claim, gpus, supervisor, Path(launch.log))
    supervisor.send(launch)
    return job
