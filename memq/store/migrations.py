"""Creating the schema, and bringing an older database to this schema version."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from memq.errors import UserError
from memq.store import schema as s
from memq.store.backend import Backend


def create(conn: Connection, backend: Backend) -> bool:
    """Create the schema if missing (safe to race), and check or upgrade its version. False when the
    database already had this version: then nothing was written."""
    backend.lock_schema(conn)
    if found_version(conn) == s.SCHEMA_VERSION:
        return False
    s.metadata.create_all(conn, checkfirst=True)
    conn.execute(backend.insert(s.meta).values(key="schema_version", value=str(s.SCHEMA_VERSION))
                 .on_conflict_do_nothing(index_elements=["key"]))
    upgrade(conn)
    return True


def found_version(conn: Connection) -> int | None:
    """The schema version of the database; None when it has no memq tables."""
    return schema_version(conn) if sa.inspect(conn).has_table("meta") else None


def schema_version(conn: Connection) -> int:
    found = conn.execute(sa.select(s.meta.c.value).where(s.meta.c.key == "schema_version")).scalar()
    return s.SCHEMA_VERSION if found is None else int(found)


def upgrade(conn: Connection) -> None:
    """Bring an older database to this schema. Version 1 -> 2: the job indexes that changed on every
    claim and finish are replaced, attempts are keyed by (job, attempt). Version 2 -> 3 adds
    group_job_deps, which :func:`create` has made already. Version 3 -> 4 adds the columns of GPU
    sharing (:data:`V4_COLUMNS`); 4 -> 5 the grids' submit fingerprints (:data:`V5_COLUMNS`) and the
    GPUs and run times in :data:`V5_INDEX`. Newer versions are an error."""
    found = schema_version(conn)
    if found == s.SCHEMA_VERSION:
        return
    if found not in (1, 2, 3, 4):
        raise UserError(f"database schema version {found}, this memq needs {s.SCHEMA_VERSION}",
                        hint="use the memq version that created it")
    if found == 1:
        _indexes_and_attempts_of_v2(conn)
    for table, column in (V4_COLUMNS if found < 4 else ()) + V5_COLUMNS:
        _add_column(conn, s.metadata.tables[table].c[column])
    conn.execute(sa.text(f"DROP INDEX {V5_INDEX}"))  # (version 5 added columns to it)
    next(ix for ix in s.jobs.indexes if ix.name == V5_INDEX).create(conn)
    conn.execute(s.meta.update().where(s.meta.c.key == "schema_version").values(value=str(s.SCHEMA_VERSION)))


V4_COLUMNS = (("jobs", "gpu_share"), ("jobs", "gpu_mem_gb"), ("workers", "sharing"))
V5_COLUMNS = (("grids", "fingerprint"), ("grids", "fingerprint_jobs"))
V5_INDEX = "ix_jobs_group_state"


def _add_column(conn: Connection, column: sa.Column) -> None:
    """Add ``column`` as the schema has it (NOT NULL ones with their default as the server's)."""
    kind = column.type.compile(dialect=conn.dialect)
    default = f" NOT NULL DEFAULT {column.default.arg}" if not column.nullable else ""
    conn.execute(sa.text(f"ALTER TABLE {column.table.name} ADD COLUMN {column.name} {kind}{default}"))


def _indexes_and_attempts_of_v2(conn: Connection) -> None:
    for name in s.RETIRED_INDEXES:
        conn.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))
    for index in s.jobs.indexes:
        index.create(conn, checkfirst=True)
    rows = [dict(r._mapping) for r in conn.execute(sa.select(*s.attempts.c))]  # (v1 has these too)
    conn.execute(sa.text("DROP TABLE attempts"))
    s.attempts.create(conn)
    if rows:
        conn.execute(s.attempts.insert(), rows)
