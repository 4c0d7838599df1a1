"""The submit fingerprint: a hash of what a grid file's expansion depends on, stored on the grid's
row by each submit (Store.submit), so that `memq submit` of an unchanged file skips expanding and
validating it again (memq.cli.lean).

What it covers: the file's bytes, the --set values as given, memq's version, and when each
directory of installed packages (site-packages) last changed - a package installed, upgraded or
removed there (a plugin's job kinds, say) changes it. What it cannot see: a kind's validator that
would now judge otherwise (weights removed from the root) or code edited in place without a
version bump; `memq submit --force` expands and validates anyway.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import memq

# (name, jobs the grid had after that submit, jobs it has now) of the grid last submitted with a
# fingerprint (hex: checked before it is written into the SQL); its jobs are counted from ix_jobs_grid.
_SUBMITTED = ("SELECT name, fingerprint_jobs, (SELECT count(*) FROM jobs WHERE jobs.grid_id = grids.id) "
              "FROM grids WHERE fingerprint = '{}'")


def fingerprint(grid_file: Path, overrides: Sequence[str]) -> str:
    """The fingerprint of expanding ``grid_file`` with these --set values (raw, in order) here.
    Raises OSError when the file cannot be read."""
    h = hashlib.sha256()
    installed = [f"{p}:{os.stat(p).st_mtime_ns}" for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    for part in ("memq-submit/1", memq.__version__, *installed, *overrides):
        h.update(part.encode("utf-8", "surrogateescape") + b"\0")
    h.update(b"\0" + grid_file.read_bytes())
    return h.hexdigest()


def unchanged(cursor: Any, digest: str) -> str | None:
    """The grid last submitted with ``digest``, if every job it had then is still there; else None
    (expand the file again)."""
    int(digest, 16)  # (hex only: it goes into the SQL)
    cursor.execute(_SUBMITTED.format(digest))
    row = cursor.fetchone()
    if row is None or row[1] is None or row[1] != row[2]:
        return None
    return row[0]
