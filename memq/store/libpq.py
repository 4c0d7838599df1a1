"""A read-only PostgreSQL connection straight through libpq (ctypes), for memq.store.direct.

`import psycopg` took 0.3 s (it loads asyncio, importlib.metadata and every type adapter), more
than all the rest of `memq status`; libpq itself loads in milliseconds. libpq does everything a
connection needs (the URL, passwords from PGPASSWORD or ~/.pgpass, TLS); this module only sends
plain SQL without parameters and reads the rows as COPY's text (one call per row: one call per
value cost 80 ms on 1,000 workers), each value typed by its column's type.
Anything it cannot do raises :class:`LibpqError`, and the caller reads through the Store instead.
"""

from __future__ import annotations

import codecs
import ctypes
from pathlib import Path
from typing import Any

_TUPLES_OK, _COMMAND_OK, _COPY_OUT, _CONNECTION_OK = 2, 1, 3, 0
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
                               ("PQprepare", [p, ctypes.c_char_p, ctypes.c_char_p, i, p], p),
                               ("PQdescribePrepared", [p, ctypes.c_char_p], p), ("PQgetResult", [p], p),
                               ("PQgetCopyData", [p, ctypes.POINTER(ctypes.c_void_p), i], i),
                               ("PQfreemem", [p], None)):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    return lib


def _bool(text: bytes) -> bool:
    return text == b"t"


def _text(field: bytes) -> str:
    """A text value as COPY writes it: backslash, tab, newline and the like escaped."""
    return (codecs.escape_decode(field)[0] if b"\\" in field else field).decode()  # type: ignore[attr-defined]


def _converter(oid: int) -> Any:
    """bytes -> the value, by the column's type (int() and float() read bytes as they are)."""
    return _bool if oid == _BOOL else int if oid in _INTS else float if oid in _FLOATS else _text


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

    def _result(self, result: int | None, ok: int) -> int:
        """``result`` if its status is ``ok``, else (freed) a LibpqError."""
        pq = self._pq
        if result and pq.PQresultStatus(result) == ok:
            return result
        message = pq.PQresultErrorMessage(result) if result else pq.PQerrorMessage(self._conn)
        pq.PQclear(result)
        raise LibpqError((message or b"").decode(errors="replace").strip())

    def execute(self, sql: str) -> Connection:
        """Run ``sql``; its rows, if any, are then fetched."""
        pq, conn, text = self._pq, self._conn, sql.encode()
        pq.PQclear(self._result(pq.PQprepare(conn, b"", text, 0, None), _COMMAND_OK))
        described = self._result(pq.PQdescribePrepared(conn, b""), _COMMAND_OK)
        convert = [_converter(pq.PQftype(described, f)) for f in range(pq.PQnfields(described))]
        pq.PQclear(described)
        if not convert:  # (not a query: no rows, no COPY)
            pq.PQclear(self._result(pq.PQexec(conn, text), _COMMAND_OK))
            self._rows = []
            return self
        pq.PQclear(self._result(pq.PQexec(conn, b"COPY (" + text + b") TO STDOUT"), _COPY_OUT))
        lines, buffer = [], ctypes.c_void_p()
        while (n := pq.PQgetCopyData(conn, ctypes.byref(buffer), 0)) > 0:
            lines.append(ctypes.string_at(buffer, n - 1))  # (less its newline)
            pq.PQfreemem(buffer)
        while (result := pq.PQgetResult(conn)) is not None:  # the end of the COPY, or its error
            pq.PQclear(self._result(result, _COMMAND_OK))
        if n != -1:
            raise LibpqError(pq.PQerrorMessage(conn).decode(errors="replace").strip())
        columns = zip(*(line.split(b"\t") for line in lines), strict=True)  # (column by column: faster)
        self._rows = list(zip(*([None if field == b"\\N" else to(field) for field in column]
                                for to, column in zip(convert, columns, strict=True)), strict=True)) if lines else []
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
