"""The process between a worker and its jobs: it keeps each job from outliving its lease.

The worker starts ``python -m memq.worker.supervisor`` when it has no idle one, and reuses it: it
writes a job's Launch message on the supervisor's stdin, then ``renew`` after every heartbeat it
committed (memq.worker.protocol); once the job ended and the supervisor said so, the next Launch
may come. One Python start-up per worker slot instead of one per job: short jobs run at hundreds
per second. The supervisor runs each job in a process group of its own and kills that whole group

* when the job ends (what it left behind in its group dies with it: the next job starts clean);
* when the worker dies: its stdin reaches EOF (and PR_SET_PDEATHSIG sends SIGTERM as a second path);
* when the worker says ``term REASON`` (SIGTERM, then SIGKILL after the grace) or ``kill REASON``;
* when no ``renew`` came for ``fence_after`` seconds since the job's Launch or its last renew, on
  this host's monotonic clock - the worker is stalled (SIGSTOP, swapped out, cut off from the
  database) and other workers may soon declare it dead and rerun the job. fence_after is well under
  the lease, so the old attempt is gone before a new one can start.

For each job it reports on stdout Started, then Exited, Fenced or Killed; or Unstartable when the
program could not be executed. The job's log starts with the worker's header and the argv, and ends
with a line saying how the attempt ended and after how long. Each job gets exactly the environment
and working directory of its Launch: nothing of one job carries over to the next. Commands that
arrive between jobs (a renew or stop for a job that already ended) are dropped.
Standard library only: it must start fast and never import the job's dependencies.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import shlex
import signal
import sys
import time
from collections import deque
from typing import Any, BinaryIO

from memq.worker.protocol import (
    Exited,
    Fenced,
    Killed,
    Launch,
    LineReader,
    Message,
    Renew,
    Report,
    Started,
    Stop,
    Unstartable,
    encode,
)

PR_SET_PDEATHSIG = 1
STDIN = 0
QUIET = 0.02  # seconds: a job that ends this soon is reported started and ended in one write


def load_prctl() -> Any:
    """libc's prctl, or None where there is none (not Linux)."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def find_program(name: str, env: dict[str, str]) -> str | None:
    """The file execvp would run for ``name`` on ``env``'s PATH, looked up before the fork (a search
    in the child costs one failed exec per PATH entry, each in a forked copy of this process);
    None where only the exec can tell: not found, or a relative PATH entry comes first."""
    if "/" in name:
        return name
    for folder in os.get_exec_path(env):
        if not os.path.isabs(folder):
            return None
        path = os.path.join(folder, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def spawn(argv: list[str], env: dict[str, str], cwd: str, *, stdin: int, output: int, prctl: Any) -> int:
    """Start ``argv`` (searched on ``env``'s PATH) in ``cwd``, in a session of its own, stdin and
    stdout+stderr from and to those file descriptors, SIGKILL as its parent-death signal; its pid.
    OSError (the child's errno) when it cannot be executed.

    By hand rather than with subprocess: subprocess imports threading, whose fork handler runs Python
    in every child, and for a no-op job the fork is most of the cost (bench/short_jobs.py). The child
    runs as little Python as it can: each page it touches is copied."""
    parent = os.getpid()
    program = find_program(argv[0], env)
    errors_r, errors_w = os.pipe()  # both close on exec: an empty read means the exec succeeded
    pid = os.fork()
    if pid == 0:  # the child: set up and exec; never return into the supervisor
        try:
            os.setsid()
            if prctl is not None:
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the supervisor died before the prctl: nobody would stop the job
                os._exit(1)
            os.dup2(stdin, 0)
            os.dup2(output, 1)
            os.dup2(output, 2)
            os.chdir(cwd)
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # ignored by Python, not by the job
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
            exec_ = os.execvpe if program is None else os.execve
            exec_(program or argv[0], argv, env)
        except BaseException as exc:  # whatever it is, the parent hears it and the child exits
            os.write(errors_w, f"{getattr(exc, 'errno', None) or 0} {getattr(exc, 'strerror', None) or exc}".encode())
        os._exit(127)
    os.close(errors_w)
    try:
        failure = os.read(errors_r, 4096)
    finally:
        os.close(errors_r)
    if failure:
        os.waitpid(pid, 0)
        number, _, why = failure.decode(errors="replace").partition(" ")
        raise OSError(int(number), why)
    return pid


def set_parent_death_signal(sig: int) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (no-op elsewhere)."""
    prctl = load_prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class Attempt:
    """One job: started from its Launch, watched until it ends, its log closed with how it ended."""

    def __init__(self, spec: Launch) -> None:
        self.spec = spec
        self.pid: int | None = None  # the job's first process, the leader of its process group
        self.code: int | None = None  # its exit code once reaped (negative: the signal that killed it)
        self.log: BinaryIO | None = None
        self.reason: str | None = None  # why we ended the job, if we did
        self.kill_at: float | None = None
        self.last_renew = time.monotonic()
        self.started = self.last_renew

    def note(self, line: str) -> None:
        """Append one ``# memq:`` line to the job's log."""
        assert self.log is not None
        self.log.write(f"# memq: {line}\n".encode(errors="backslashreplace"))
        self.log.flush()

    def start(self, stdin: int, prctl: Any) -> Report:
        """Start the job: Started, or Unstartable (also said in its log) if it cannot be executed."""
        spec = self.spec
        self.log = open(spec.log, "ab")  # noqa: SIM115 - open for the attempt's life, closed by finish()
        if spec.header:
            self.log.write(spec.header.encode() + b"\n")
        self.note("argv " + shlex.join(spec.argv))
        try:
            self.pid = spawn(spec.argv, spec.env, spec.cwd, stdin=stdin, output=self.log.fileno(), prctl=prctl)
        except OSError as exc:  # missing, not executable, not an executable format, argv too long
            why = f"cannot execute {spec.argv[0]!r}: {exc.strerror or exc}"
            self.note(f"{why}; not retried")
            self.log.close()
            return Unstartable(why)
        self.started = time.monotonic()
        return Started(self.pid)

    def poll(self, block: bool = False) -> int | None:
        """The job's exit code once its first process ended (reaped then), else None."""
        assert self.pid is not None
        if self.code is None:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def end(self, reason: str, sig: int) -> None:
        """Stop the job's whole process group (once; SIGKILL may follow a SIGTERM)."""
        assert self.pid is not None
        if self.reason is None:
            self.reason = reason
        _kill_group(self.pid, sig)
        if sig == signal.SIGTERM and self.kill_at is None:
            self.kill_at = time.monotonic() + self.spec.term_grace

    def obey(self, command: Message) -> None:
        match command:
            case Renew():
                self.last_renew = time.monotonic()
            case Stop(why=why, kill=False):
                self.end(why or "terminated", signal.SIGTERM)
            case Stop(why=why, kill=True):
                self.end(why or "killed", signal.SIGKILL)

    def due(self) -> float:
        """Fence the job or follow a SIGTERM with SIGKILL when that is due; seconds until the next check."""
        assert self.pid is not None
        now = time.monotonic()
        if self.kill_at is not None and now >= self.kill_at:
            _kill_group(self.pid, signal.SIGKILL)
            self.kill_at = None
        fence_at = self.last_renew + self.spec.fence_after
        if now > fence_at and self.reason is None:
            self.end("fenced", signal.SIGKILL)
        deadlines = [t for t in (fence_at if self.reason is None else None, self.kill_at) if t is not None]
        return max(0.0, min(deadlines, default=now + 1.0) - now)

    def finish(self) -> Report:
        """The job's first process ended: kill what it left in its group, close its log, say how it ended."""
        assert self.pid is not None and self.log is not None
        code = self.poll(block=True)
        assert code is not None
        _kill_group(self.pid, signal.SIGKILL)  # stragglers the job left in its group
        took = f"after {time.monotonic() - self.started:.1f}s"
        how = f"exit code {code}" if code >= 0 else f"killed by signal {_signal_name(-code)}"
        if self.reason == "fenced":
            line = f"stopped: lease not renewed in time (the worker stalled), {how}, {took}"
        elif self.reason is not None:
            line = f"stopped: {self.reason}, {how}, {took}"
        else:
            line = f"ended: {how}, {took}"
        with contextlib.suppress(OSError):
            self.note(line)
        with contextlib.suppress(OSError):
            self.log.close()
        if self.reason == "fenced":
            return Fenced()
        return Killed(self.reason, code) if self.reason is not None else Exited(code)


class Supervisor:
    """Serves the worker's Launches one after the other until the worker goes away."""

    def __init__(self) -> None:
        self.commands: deque[Message] = deque()
        self._reader = LineReader()
        self.worker_gone = False
        self.attempt: Attempt | None = None
        self.sel = selectors.DefaultSelector()
        self.sel.register(STDIN, selectors.EVENT_READ, None)
        self.prctl = load_prctl()  # loaded once: each job's first process asks for SIGKILL at our death
        self.devnull = os.open(os.devnull, os.O_RDONLY)  # every job's stdin (dup2'd: this one is not inherited)

    @staticmethod
    def say(*reports: Report) -> None:
        """Tell the worker, in one write."""
        with contextlib.suppress(BrokenPipeError):
            sys.stdout.buffer.write(b"".join(map(encode, reports)))
            sys.stdout.flush()

    def read_commands(self) -> None:
        """Queue what the worker wrote (blocks until it wrote something); EOF: the worker is gone."""
        chunk = os.read(STDIN, 65536)
        if chunk:
            self.commands.extend(self._reader.feed(chunk))
        else:
            self.worker_gone = True
            self.sel.unregister(STDIN)

    def next_launch(self) -> Launch | None:
        """The next job to run; None once the worker is gone. What came for the last job is dropped."""
        while True:
            while self.commands:
                command = self.commands.popleft()
                if isinstance(command, Launch):
                    return command
            if self.worker_gone:
                return None
            self.read_commands()

    def run_one(self, attempt: Attempt) -> None:
        self.attempt = attempt
        started = attempt.start(self.devnull, self.prctl)
        if isinstance(started, Unstartable):
            self.say(started)
            return
        assert attempt.pid is not None
        unsaid = [started]  # said with the job's end if that comes within QUIET: one wake-up of the worker
        try:
            pidfd = os.pidfd_open(attempt.pid)
            self.sel.register(pidfd, selectors.EVENT_READ, "job")
        except (AttributeError, OSError):
            pidfd = None
        try:
            while attempt.poll() is None:
                timeout = min(attempt.due(), QUIET if unsaid else 1.0 if pidfd is not None else 0.05)
                ready = self.sel.select(timeout)
                if unsaid and attempt.poll() is None:
                    self.say(*unsaid)
                    unsaid.clear()
                if any(key.fd == STDIN for key, _ in ready):
                    self.read_commands()
                while self.commands and not isinstance(self.commands[0], Launch):
                    attempt.obey(self.commands.popleft())
                if self.worker_gone:
                    attempt.end("worker gone", signal.SIGKILL)
        finally:
            if pidfd is not None:
                self.sel.unregister(pidfd)
                os.close(pidfd)
        self.say(*unsaid, attempt.finish())
        self.attempt = None

    def serve(self) -> int:
        while (spec := self.next_launch()) is not None:
            self.run_one(Attempt(spec))
        return 0


def main() -> None:
    set_parent_death_signal(signal.SIGTERM)
    supervisor = Supervisor()

    def on_term(_sig: int, _frame: object) -> None:
        attempt = supervisor.attempt
        if attempt is not None and attempt.pid is not None:
            _kill_group(attempt.pid, signal.SIGKILL)
        os._exit(1)

    signal.signal(signal.SIGTERM, on_term)
    if os.getppid() == 1:  # the worker died before we could ask to be told
        sys.exit(1)
    sys.exit(supervisor.serve())


if __name__ == "__main__":
    main()
