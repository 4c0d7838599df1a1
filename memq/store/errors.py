"""Errors the store raises that its callers act on, without knowing which database is behind it."""

from __future__ import annotations

from memq.errors import UserError


class StoreUnavailable(Exception):
    """The database could not be reached or refused the transaction (a server restart, a broken
    connection, a file it cannot open): the caller may wait and try again later.

    The backends raise it as a subclass that is also the SQLAlchemy error it replaces
    (memq.store.backend), so code that catches SQLAlchemy's errors keeps working.
    """

    @property
    def reason(self) -> str:
        """Why, in one line (the driver's own message where there is one)."""
        text = str(getattr(self, "orig", None) or super().__str__()).strip()
        return text.splitlines()[0] if text else type(self).__name__


class DatabaseDamaged(UserError):
    """The database reports its own file corrupt: the transaction was rolled back; only a backup
    (or the database's own recovery tools) can help."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"the database is damaged ({detail}); nothing was written", where=where,
                         hint="restore it from a backup")
