"""The process between a worker and one job: it keeps the job from outliving its lease.

The worker starts ``python -m memq.worker.supervisor``, writes the job's Launch message on its
stdin, then keeps writing ``renew`` after every heartbeat it committed (memq.worker.protocol).
The supervisor runs the job in its own process group and kills that whole group when

* the worker dies: its stdin reaches EOF (and PR_SET_PDEATHSIG sends SIGTERM as a second path);
* the worker says ``term REASON`` (SIGTERM, then SIGKILL after the grace) or ``kill REASON``;
* no ``renew`` came for ``fence_after`` seconds on this host's monotonic clock - the worker is
  stalled (SIGSTOP, swapped out, cut off from the database) and other workers may soon declare
  it dead and rerun the job. fence_after is well under the lease, so the old attempt is gone
  before a new one can start.

It reports on stdout: Started, then Exited, Fenced or Killed; or Unstartable when the program could
not be executed. The job's log starts with the worker's header and the argv, and ends with a line
saying how the attempt ended and after how long.
Standard library only: it must start fast and never import the job's dependencies.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import shlex
import signal
import subprocess
import sys
import time

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
    decode,
    encode,
)

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class Supervisor:
    def __init__(self, spec: Launch) -> None:
        self.spec = spec
        self.fence_after = spec.fence_after
        self.term_grace = spec.term_grace
        self.proc: subprocess.Popen[bytes] | None = None
        self.reason: str | None = None  # why we ended the job, if we did
        self.kill_at: float | None = None
        self.last_renew = time.monotonic()
        self.started = time.monotonic()
        self._commands = LineReader()

    def note(self, line: str) -> None:
        """Append one ``# memq:`` line to the job's log."""
        with open(self.spec.log, "ab") as log:
            log.write(f"# memq: {line}\n".encode(errors="backslashreplace"))

    def start(self) -> bool:
        """Start the job; False (reported as Unstartable, and said in its log) if it cannot be executed."""
        spec = self.spec
        with open(spec.log, "ab") as log:
            log.write(spec.header.encode() + b"\n" if spec.header else b"")
        self.note("argv " + shlex.join(spec.argv))
        with open(spec.log, "ab") as log:
            try:
                self.proc = subprocess.Popen(
                    spec.argv, env=spec.env, cwd=spec.cwd, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=lambda: set_parent_death_signal(signal.SIGKILL),
                )
            except OSError as exc:  # missing, not executable, not an executable format, argv too long
                why = f"cannot execute {spec.argv[0]!r}: {exc.strerror or exc}"
        if self.proc is None:
            self.note(f"{why}; not retried")
            self.say(Unstartable(why))
            return False
        self.started = time.monotonic()
        self.say(Started(self.proc.pid))
        return True

    def ending(self, code: int) -> str:
        """The log's last line: how the attempt ended, and after how long."""
        took = f"after {time.monotonic() - self.started:.1f}s"
        how = f"exit code {code}" if code >= 0 else f"killed by signal {_signal_name(-code)}"
        if self.reason == "fenced":
            return f"stopped: lease not renewed in time (the worker stalled), {how}, {took}"
        if self.reason is not None:
            return f"stopped: {self.reason}, {how}, {took}"
        return f"ended: {how}, {took}"

    @staticmethod
    def say(report: Report) -> None:
        with contextlib.suppress(BrokenPipeError):
            sys.stdout.buffer.write(encode(report))
            sys.stdout.flush()

    def end(self, reason: str, sig: int) -> None:
        """Stop the job's whole process group (once; SIGKILL may follow a SIGTERM)."""
        assert self.proc is not None
        if self.reason is None:
            self.reason = reason
        _kill_group(self.proc.pid, sig)
        if sig == signal.SIGTERM and self.kill_at is None:
            self.kill_at = time.monotonic() + self.term_grace

    def on_command(self, command: Message) -> None:
        match command:
            case Renew():
                self.last_renew = time.monotonic()
            case Stop(why=why, kill=False):
                self.end(why or "terminated", signal.SIGTERM)
            case Stop(why=why, kill=True):
                self.end(why or "killed", signal.SIGKILL)

    def read_commands(self) -> bool:
        """Handle what the worker wrote; False at EOF (the worker is gone)."""
        chunk = os.read(sys.stdin.fileno(), 4096)
        if not chunk:
            return False
        for command in self._commands.feed(chunk):
            self.on_command(command)
        return True

    def run(self) -> int:
        if not self.start():
            return 0
        assert self.proc is not None
        sel = selectors.DefaultSelector()
        sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "worker")
        try:
            pidfd = os.pidfd_open(self.proc.pid)
            sel.register(pidfd, selectors.EVENT_READ, "job")
        except (AttributeError, OSError):
            pidfd = None
        worker_gone = False
        while self.proc.poll() is None:
            now = time.monotonic()
            if self.kill_at is not None and now >= self.kill_at:
                _kill_group(self.proc.pid, signal.SIGKILL)
            if now - self.last_renew > self.fence_after and self.reason is None:
                self.end("fenced", signal.SIGKILL)
            timeout = max(0.0, self.last_renew + self.fence_after - now)
            timeout = min(timeout, 1.0 if pidfd is not None else 0.05)
            for key, _ in sel.select(timeout):
                if key.data == "worker" and not worker_gone and not self.read_commands():
                    worker_gone = True
                    sel.unregister(sys.stdin.fileno())
                    self.end("worker gone", signal.SIGKILL)
        code = self.proc.wait()
        _kill_group(self.proc.pid, signal.SIGKILL)  # stragglers the job left in its group
        with contextlib.suppress(OSError):
            self.note(self.ending(code))
        if self.reason == "fenced":
            self.say(Fenced())
        elif self.reason is not None:
            self.say(Killed(self.reason, code))
        else:
            self.say(Exited(code))
        return 0


def main() -> None:
    set_parent_death_signal(signal.SIGTERM)
    spec = decode(sys.stdin.buffer.readline())
    if not isinstance(spec, Launch):
        sys.exit(f"memq supervisor: expected a launch message, got {spec}")
    supervisor = Supervisor(spec)

    def on_term(_sig: int, _frame: object) -> None:
        if supervisor.proc is not None:
            _kill_group(supervisor.proc.pid, signal.SIGKILL)
        os._exit(1)

    signal.signal(signal.SIGTERM, on_term)
    if os.getppid() == 1:  # the worker died before we could ask to be told
        sys.exit(1)
    sys.exit(supervisor.run())


if __name__ == "__main__":
    main()
