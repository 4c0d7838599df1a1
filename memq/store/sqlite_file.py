"""A root's SQLite database file: its name, the mode it was created in, and how it is opened.

Without SQLAlchemy: memq.store.sqlite (the backend) and memq.store.direct (reads without
SQLAlchemy) both open the file this way.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path

from memq.errors import UserError

DB_FILE = "queue.db"
MODE_FILE = "queue.mode"
MODES = ("local", "shared")


def recorded_mode(path: Path) -> str | None:
    """The SQLite mode a database was created in ('local' or 'shared'); None if it is new.

    Kept in a side file: reading the database file's own header would mean opening and closing
    it, and closing any descriptor of a file drops every POSIX lock this process holds on it -
    SQLite's included (sqlite.org/howtocorrupt.html, 2.2).
    """
    mode_file = path.with_name(MODE_FILE)
    try:
        mode = mode_file.read_text().strip()
    except FileNotFoundError:
        return None
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}", where=str(mode_file), hint="local or shared")
    return mode


def connect(path: Path, *, shared: bool) -> sqlite3.Connection:
    """A connection to the database file ``path``, which exists: opened read-write, never created
    (mode=rw), so that a worker whose file is gone for a while (moved away, a network filesystem's
    hiccup) reports it unavailable instead of making an empty database in its place. The URI is
    percent-encoded here, so any character may be in the path. Shared: SQLite's own locking off
    (memq's lock stands in)."""
    uri = f"file:{urllib.parse.quote(str(path))}?mode=rw" + ("&nolock=1" if shared else "")
    return sqlite3.connect(uri, uri=True, timeout=60, check_same_thread=False)
