"""What each backend owns: how an outage is reported, and what a job process needs to open the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from memq.store.backends import open_backend
from memq.store.errors import StoreUnavailable
from memq.store.store import Store

from ..conftest import Rig


def test_an_unreachable_database_is_store_unavailable_and_still_sqlalchemy_s_error(tmp_path: Path) -> None:
    # SQLite: the database path cannot be opened; PostgreSQL: nothing listens on the port.
    (tmp_path / "queue.db").mkdir()
    sqlite_store = Store(open_backend(tmp_path, None, "local", fs_local=True), tmp_path)
    pg_store = Store(open_backend(tmp_path, "postgresql://memq@127.0.0.1:1/memq", None, fs_local=True), tmp_path)
    for st in (sqlite_store, pg_store):
        with pytest.raises(StoreUnavailable) as caught:
            st.counts()
        assert isinstance(caught.value, sa.exc.OperationalError)
        reason = caught.value.reason  # what the worker logs: one line
        assert reason and "\n" not in reason
        if st is sqlite_store:
            assert reason == "unable to open database file"
        st.backend.dispose()


def test_the_outage_error_is_recognised_without_importing_sqlalchemy() -> None:
    code = "import sys; import memq.store.errors; print('sqlalchemy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_a_job_s_environment_carries_no_password_in_the_url(tmp_path: Path) -> None:
    url = "postgresql://memq:s3cr%40t@db.example:5433/memq?sslmode=require"
    st = Store(open_backend(tmp_path, url, None, fs_local=True), tmp_path)
    assert st.job_env() == {"MEMQ_DB": "postgresql+psycopg://memq@db.example:5433/memq?sslmode=require",
                            "PGPASSWORD": "s3cr@t"}
    in_query = Store(open_backend(tmp_path, "postgresql://memq@db/memq?password=s3cr%40t&sslmode=require", None,
                                  fs_local=True), tmp_path)
    assert in_query.job_env() == {"MEMQ_DB": "postgresql+psycopg://memq@db/memq?sslmode=require",
                                  "PGPASSWORD": "s3cr@t"}
    no_password = Store(open_backend(tmp_path, "postgresql://memq@db/memq", None, fs_local=True), tmp_path)
    assert no_password.job_env() == {"MEMQ_DB": "postgresql+psycopg://memq@db/memq"}
    sqlite_store = Store(open_backend(tmp_path, None, None, fs_local=True), tmp_path)
    assert sqlite_store.job_env() == {}  # a job opens the SQLite store through MEMQ_ROOT


def test_a_job_process_opens_the_store_with_its_environment_alone(rig: Rig) -> None:
    st = rig.store()
    env = {k: v for k, v in os.environ.items() if k not in ("MEMQ_DB", "PGPASSWORD")}
    env.update(st.job_env(), MEMQ_ROOT=str(rig.roots[0]))  # as the worker gives it to a job
    code = ("import json; from memq.options import RootOptions; from memq.root import open_store\n"
            "print(json.dumps(open_store(RootOptions(), create=False).counts()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == st.counts()


@pytest.mark.parametrize("mode", ["local", "shared"])
def test_a_database_file_that_is_gone_is_unavailable_and_not_made_anew(tmp_path: Path, mode: str) -> None:
    """Moved away for a while (or an NFS hiccup): the store says it is unavailable and leaves the
    path empty - an empty database made in its place would be taken for the queue. Any character
    may be in a root's path (SQLite is reached through a URI)."""
    from memq.root import RootOptions, open_store
    from memq.spec import GridSpec, GroupSpec, JobSpec

    root = tmp_path / "a root #1 ?x=%41&y"
    st = open_store(RootOptions(root=str(root), db_mode=mode), create=True)
    st.submit(GridSpec("g", (GroupSpec("a"),), (JobSpec("g", "a", "command", {}, command=["true"]),)))
    assert sorted(p.name for p in tmp_path.iterdir()) == [root.name]  # (the URI named no other file)
    st.backend.dispose()  # (a local store keeps its connection, which holds the file open)
    db = root / "queue.db"
    db.rename(root / "away")
    with pytest.raises(StoreUnavailable) as caught:
        st.counts()
    assert caught.value.reason == "unable to open database file"
    assert not db.exists()
    (root / "away").rename(db)
    assert st.counts() == {"g": {"queued": 1, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}}
