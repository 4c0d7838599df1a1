"""A read-only PostgreSQL connection straight through libpq (ctypes), for memq.store.direct.

`import psycopg` took 0.3 s (it loads asyncio, importlib.metadata and every type adapter), more
than all the rest of `memq status`; libpq itself loads in milliseconds. libpq does everything a
connection needs (the URL, passwords from PGPASSWORD or ~/.pgpass, TLS); this module only sends
plain SQL without parameters and reads the text of the values, typed by their column's type.
Anything it cannot do raises :class:`LibpqError`, and the caller reads through the Store instead.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

_TUPLES_OK, _COMMAND_OK, _CONNECTION_OK = 2, 1, 0
_BOOL, _INTS, _FLOATS = 16, {20, 21, 23, 26}, {700, 701, 1700}  # type oids (pg_type)


class LibpqError(Exception):
    """libpq is missing, or the connection or a statement failed."""


def _library() -> ctypes.CDLL:
    """The system's libpq, or the one psycopg's binary wheel brings."""
    try:
        return ctypes.CDLL("libpq.so.5")
    except OSError:
        pass
    from importlib.util import find_spec

    spec = find_spec("psycopg_binary")
    libs = Path(spec.origin).parent.parent / "psycopg_binary.libs" if spec and spec.origin else None
    found = sorted(libs.glob("libpq-*.so*")) if libs else []
    if not found:
        raise LibpqError("libpq not found")
    return ctypes.CDLL(str(found[0]))


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i = ctypes.c_void_p, ctypes.c_int
    for name, args, result in (("PQconnectdb", [ctypes.c_char_p], p), ("PQstatus", [p], i),
                               ("PQerrorMessage", [p], ctypes.c_char_p), ("PQfinish", [p], None),
                               ("PQexec", [p, ctypes.c_char_p], p), ("PQresultStatus", [p], i),
                               ("PQresultErrorMessage", [p], ctypes.c_char_p), ("PQclear", [p], None),
                               ("PQntuples", [p], i), ("PQnfields", [p], i), ("PQftype", [p, i], ctypes.c_uint),
                               ("PQgetvalue", [p, i, i], ctypes.c_char_p), ("PQgetisnull", [p, i, i], i)):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    return lib


def _converter(oid: int) -> Any:
    if oid == _BOOL:
        return lambda text: text == b"t"
    if oid in _INTS:
        return int
    if oid in _FLOATS:
        return float
    return lambda text: text.decode()


class Connection:
    """One connection, used as a cursor: :meth:`execute` then :meth:`fetchall` or :meth:`fetchone`."""

    def __init__(self, url: str) -> None:
        self._pq = _bind(_library())
        self._conn = self._pq.PQconnectdb(url.encode())
        self._rows: list[tuple[Any, ...]] = []
        if not self._conn or self._pq.PQstatus(self._conn) != _CONNECTION_OK:
            message = self._pq.PQerrorMessage(self._conn) if self._conn else b"out of memory"
            self.close()
            raise LibpqError((message or b"").decode(errors="replace").strip())
        self.execute("SET client_encoding TO 'UTF8'")

    def execute(self, sql: str) -> Connection:
        pq = self._pq
        result = pq.PQexec(self._conn, sql.encode())
        try:
            status = pq.PQresultStatus(result) if result else -1
            if status not in (_TUPLES_OK, _COMMAND_OK):
                message = pq.PQresultErrorMessage(result) if result else pq.PQerrorMessage(self._conn)
                raise LibpqError((message or b"").decode(errors="replace").strip())
            fields = range(pq.PQnfields(result))
            convert = [_converter(pq.PQftype(result, f)) for f in fields]
            getvalue, isnull = pq.PQgetvalue, pq.PQgetisnull
            # (an empty text is NULL or ''; only then ask which)
            self._rows = [tuple(None if not (text := getvalue(result, r, f)) and isnull(result, r, f)
                                else convert[f](text) for f in fields)
                          for r in range(pq.PQntuples(result))]
        finally:
            pq.PQclear(result)
        return self

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self._rows = self._rows, []
        return rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows.pop(0) if self._rows else None

    def close(self) -> None:
        if self._conn:
            self._pq.PQfinish(self._conn)
            self._conn = None
