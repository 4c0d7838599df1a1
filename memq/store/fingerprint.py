"""Whether a grid file is unchanged since the grid's last submit: each submit keeps the fingerprint of
what it expanded (memq.cli.lean.fingerprint) on the grid's row, with the grid's job count then."""

from __future__ import annotations

from typing import Any

# (name, jobs the grid had after that submit, jobs it has now) of the grid last submitted with a
# fingerprint (hex: checked before it is written into the SQL); its jobs are counted from ix_jobs_grid.
_SUBMITTED = ("SELECT name, fingerprint_jobs, (SELECT count(*) FROM jobs WHERE jobs.grid_id = grids.id) "
              "FROM grids WHERE fingerprint = '{}'")


def unchanged(cursor: Any, digest: str) -> str | None:
    """The grid last submitted with ``digest``, if every job it had then is still there; else None
    (expand the file again)."""
    int(digest, 16)  # (hex only: it goes into the SQL)
    cursor.execute(_SUBMITTED.format(digest))
    row = cursor.fetchone()
    if row is None or row[1] is None or row[1] != row[2]:
        return None
    return row[0]
