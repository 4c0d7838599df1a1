"""Errors the store raises that its callers act on, without knowing which database is behind it."""

from __future__ import annotations


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
