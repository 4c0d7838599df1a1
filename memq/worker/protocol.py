"""The lines a worker and a job's supervisor exchange over the supervisor's stdin and stdout.

Worker -> supervisor, for each job it runs: ``launch {json}``, then ``renew`` after every heartbeat
the worker committed, and ``term WHY`` / ``kill WHY`` to stop the job. Supervisor -> worker:
``started PID``, then one of ``exit CODE``, ``fenced``, ``killed WHY CODE`` or ``unstartable WHY``
(the program could not be executed: missing, not executable, arguments too long); after that last
word the next ``launch`` may come. Both sides use :func:`encode` and
:class:`LineReader`. Standard library only, and NamedTuples rather than dataclasses: the
supervisor must start fast (dataclasses imports inspect: ~20 ms more before every job starts).
Compare messages by type and value: as tuples, ``Renew() == Fenced()``.
"""

from __future__ import annotations

import json
from typing import NamedTuple


class Launch(NamedTuple):
    """What to run, and how the supervisor guards it."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    log: str  # the job's stdout and stderr, appended
    fence_after: float  # kill the job when no renew came for this long
    term_grace: float = 10.0  # SIGTERM -> SIGKILL
    header: str = ""  # first line written to the log


class Renew(NamedTuple):
    """The worker renewed this job's lease."""


class Stop(NamedTuple):
    """Stop the job: SIGTERM then SIGKILL after the grace, or SIGKILL at once (``kill``)."""

    why: str = ""
    kill: bool = False


class Started(NamedTuple):
    pid: int


class Exited(NamedTuple):
    """The job ended by itself with this exit code (negative: killed by that signal)."""

    code: int


class Fenced(NamedTuple):
    """No renew came in time: the supervisor killed the job."""


class Killed(NamedTuple):
    """The job was stopped on request (``why``) or because the worker went away."""

    why: str
    code: int


class Unstartable(NamedTuple):
    """The job's program could not be executed (``why``: the system's reason); retrying cannot help."""

    why: str


Command = Launch | Renew | Stop
Report = Started | Exited | Fenced | Killed | Unstartable
Message = Command | Report


def encode(message: Message) -> bytes:
    match message:
        case Launch():
            text = "launch " + json.dumps(message._asdict())
        case Renew():
            text = "renew"
        case Stop(why=why, kill=kill):
            text = f"{'kill' if kill else 'term'} {why}"
        case Started(pid=pid):
            text = f"started {pid}"
        case Exited(code=code):
            text = f"exit {code}"
        case Fenced():
            text = "fenced"
        case Killed(why=why, code=code):
            text = f"killed {why.replace(' ', '_')} {code}"
        case Unstartable(why=why):
            text = "unstartable " + json.dumps(why)
    return text.encode() + b"\n"


def decode(line: bytes) -> Message:
    """The message of one line (without its newline); ValueError if it is none."""
    word, _, rest = line.decode().strip().partition(" ")
    match word:
        case "launch":
            return Launch(**json.loads(rest))
        case "renew":
            return Renew()
        case "term" | "kill":
            return Stop(rest, kill=word == "kill")
        case "started":
            return Started(int(rest))
        case "exit":
            return Exited(int(rest))
        case "fenced":
            return Fenced()
        case "killed":
            why, _, code = rest.rpartition(" ")
            return Killed(why, int(code))
        case "unstartable":
            return Unstartable(json.loads(rest))
    raise ValueError(f"not a memq supervisor message: {line[:80]!r}")


class LineReader:
    """Turns the chunks read from a pipe into messages."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, chunk: bytes) -> list[Message]:
        self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n")
        return [decode(line) for line in lines]
