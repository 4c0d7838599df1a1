"""`memq status` and the resubmit of an unchanged grid, answered without Typer, SQLAlchemy or the
grid's expansion: their start-up (interpreter and imports) was most of their time.

Only the plain forms are taken here - ``[--root R] [--db URL] [--db-mode M] [--debug] status
[--json]`` and ``... submit FILE [--set K=V]... [--json]`` with the queue options in either place -
and only where memq.store.direct can read the store. Everything else (other options, --help,
--watch, an option's error, a store only the Store may open, a file that changed) returns False,
and the Typer app (memq.cli.commands) runs the command as it always does.

The submit fingerprint (:func:`fingerprint`) covers the grid file's bytes, the --set values as
given, memq's version, and when each directory of installed packages (site-packages) last changed:
a package installed, upgraded or removed there (a plugin's job kinds, say) changes it. It cannot
see a kind's validator that would now judge otherwise (weights removed from the root) or code
edited in place without a version bump: `memq submit --force` expands and validates anyway.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import memq
from memq.errors import UserError
from memq.options import RootOptions

T = TypeVar("T")

_QUEUE_OPTIONS = {"--root": "root", "--db": "db", "--db-mode": "db_mode"}
# per command: its flags, its options that take a value, and how many arguments it takes
_FLAGS = {"status": {"--json"}, "submit": {"--json"}}
_VALUED = {"status": set(), "submit": {"--set"}}
_ARGUMENTS = {"status": 0, "submit": 1}


class _Parsed:
    def __init__(self) -> None:
        self.queue: dict[str, str] = {}
        self.command: str | None = None
        self.arguments: list[str] = []
        self.flags: set[str] = set()
        self.sets: list[str] = []


def _parse(argv: list[str]) -> _Parsed | None:
    """The command line, if it is one of the plain forms (see above); else None."""
    out = _Parsed()
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        command = out.command
        if name in _QUEUE_OPTIONS or (command and name in _VALUED[command]):
            if not eq:
                if i + 1 == len(argv) or argv[i + 1].startswith("-"):
                    return None
                i += 1
                value = argv[i]
            if name == "--set":
                out.sets.append(value)
            else:
                out.queue[_QUEUE_OPTIONS[name]] = value  # (the later of two wins, as in memq.cli.group)
        elif arg == "--debug" and command is None:
            pass
        elif command and arg in _FLAGS[command]:
            out.flags.add(arg)
        elif arg.startswith("-") or (command is None and arg not in _ARGUMENTS):
            return None  # (before the command: only the queue's options and --debug)
        elif command is None:
            out.command = arg
        else:
            out.arguments.append(arg)
        i += 1
    if out.command is None or len(out.arguments) != _ARGUMENTS[out.command]:
        return None
    return out


def run(argv: list[str]) -> bool:
    """Run the command if it is one this module answers; False when the Typer app must."""
    parsed = _parse(argv)
    if parsed is None:
        return False
    # A short-lived process that holds little: the cyclic garbage collector's passes during the imports
    # and its last pass over every object at exit were ~35 ms of a 0.2 s `memq status`. Reference
    # counting still frees what is dropped. The Typer app (the worker among its commands) gets it back.
    gc.disable()
    answered = False
    try:
        answered = _answer(parsed)
    finally:
        if answered:
            gc.freeze()  # the objects left are the process's until it exits: no last pass over them
        else:
            gc.enable()
    return answered


def _answer(parsed: _Parsed) -> bool:
    options = RootOptions(**parsed.queue)
    if parsed.command == "status":
        return _status(options, "--json" in parsed.flags)
    return _unchanged_submit(options, Path(parsed.arguments[0]), parsed.sets, "--json" in parsed.flags)


def fingerprint(grid_file: Path, overrides: Sequence[str]) -> str:
    """What expanding ``grid_file`` with these --set values (raw, in order) here depends on, hashed
    (see above). Raises OSError when the file cannot be read."""
    import hashlib

    h = hashlib.sha256()
    installed = [f"{p}:{os.stat(p).st_mtime_ns}" for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    for part in ("memq-submit/1", memq.__version__, *installed, *overrides):
        h.update(part.encode("utf-8", "surrogateescape") + b"\0")
    h.update(b"\0" + grid_file.read_bytes())
    return h.hexdigest()


def _read(options: RootOptions, fn: Callable[[Any], T]) -> T | None:
    """memq.store.direct.read of the queue these options name; None where the Store must read it."""
    from memq.fsinfo import is_local
    from memq.store import direct

    try:
        root = options.resolve_root()
    except UserError:
        return None
    url = options.db_url()
    return direct.read(root, url, options.db_mode, fn, fs_local=bool(url) or (root.is_dir() and is_local(root)))


def _status(options: RootOptions, as_json: bool) -> bool:
    from memq.dashboard import snapshot_of
    from memq.store import overview

    view = _read(options, overview.read)
    if view is None:
        return False
    print_status(snapshot_of(view), as_json)
    return True


def print_status(snap: dict[str, Any], as_json: bool) -> None:
    """`memq status` (without --watch) of this snapshot."""
    from memq.cli.common import print_json, printable

    if as_json:
        print_json(snap)
        return
    from rich.console import Console

    from memq.dashboard import render

    # What workers and jobs wrote (names, reasons, progress) is shown as text: no [markup], no escapes.
    Console(markup=False).print(render(printable(snap)))


def _unchanged_submit(options: RootOptions, grid_file: Path, sets: list[str], as_json: bool) -> bool:
    """Say so and return True when the file is unchanged since the grid's last submit (with these
    --set values) and every job that submit left is still there."""
    from memq.store.fingerprint import unchanged

    try:
        digest = fingerprint(grid_file, sets)
    except OSError:
        return False
    found = _read(options, lambda cursor: unchanged(cursor, digest))
    if found is None:
        return False
    print_unchanged(found, as_json)
    return True


def print_unchanged(grid: str, as_json: bool) -> None:
    """What `memq submit` says of a file unchanged since the grid's last submit (jobs already queued:
    not counted, the file was not expanded)."""
    from memq.cli.common import print_json

    if as_json:
        print_json({"grid": grid, "added": 0, "existing": None, "edited": 0, "unchanged": True})
        return
    sys.stdout.write(f"{grid}: unchanged since the last submit, nothing to do (0 jobs added; the file was not "
                     "expanded or validated again: --force does both)\n")
