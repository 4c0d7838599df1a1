"""The two things the worker asks of the database beyond the Store API.

Both look past the store (at SQLAlchemy's exceptions, at the backend's engine); each is one
function so that the store can answer them itself (an outage exception of its own, a job
environment without the password) without the worker changing anywhere else.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

# Errors that mean "not now" rather than a bug: lost connections, I/O errors, a locked file.
_OUTAGES = (sa.exc.OperationalError, sa.exc.InterfaceError)


def outage(exc: BaseException) -> str | None:
    """Why the database cannot be used now (one line) if ``exc`` says so, else None."""
    if not isinstance(exc, _OUTAGES):
        return None
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def job_store_env(store: Any) -> dict[str, str]:
    """What a job process needs to open the worker's store: the root's SQLite file needs nothing;
    PostgreSQL needs its URL (MEMQ_DB)."""
    if store.backend.dialect != "postgresql":
        return {}
    return {"MEMQ_DB": store.backend.engine.url.render_as_string(hide_password=False)}
