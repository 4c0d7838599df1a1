"""The command line as a user types it."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import Rig


def memq(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("memq")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_smoke_example_as_written(tmp_path: Path, smoke_file: Path) -> None:
    root = tmp_path / "root"
    first = memq("--root", root, "submit", smoke_file)
    assert first.returncode == 0, first.stderr
    assert "9 jobs added" in first.stdout
    second = memq("--root", root, "submit", smoke_file)
    assert "0 jobs added" in second.stdout
    status = json.loads(memq("--root", root, "status", "--json").stdout)
    assert status["counts"] == {"queued": 9, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert [(g["name"], g["counts"]["queued"]) for g in status["grids"]] == [("smoke", 9)]
    # MEMQ_ROOT works as well as --root
    assert json.loads(memq("status", "--json", env={"MEMQ_ROOT": str(root)}).stdout)["counts"]["queued"] == 9


def test_cli_commands_on_every_backend(rig: Rig, cli, smoke_file: Path) -> None:
    base = rig.cli_args()
    added = json.loads(cli(*base, "submit", "--json", smoke_file).out)
    assert added == {"grid": "smoke", "added": 9, "existing": 0, "edited": 0, "unchanged": False}
    jobs = json.loads(cli(*base, "jobs", "--json").out)
    assert len(jobs) == 9
    first = jobs[0]
    for key in ("id", "grid", "group", "kind", "params", "state", "attempt", "metrics"):
        assert key in first
    assert (first["grid"], first["group"], first["kind"], first["state"], first["attempt"]) == (
        "smoke", "rois", "command", "queued", 0)
    assert first["params"] == {"subj": 1, "roi": "E"}
    assert cli(*base, "pause", "smoke").out.strip() == "smoke: paused"
    assert json.loads(cli(*base, "status", "--json").out)["grids"][0]["paused"] is True
    assert cli(*base, "resume", "smoke").code == 0
    assert cli(*base, "cancel", first["id"]).out == "cancelled 1 queued job; asked workers to stop 0 running jobs\n"
    by_state = json.loads(cli(*base, "jobs", "--json", "--state", "cancelled").out)
    assert [j["id"] for j in by_state] == [first["id"]]
    assert cli(*base, "retry", "--cancelled").out == "requeued 1 job\n"
    assert json.loads(cli(*base, "status", "--json").out)["counts"]["queued"] == 9
    rows = json.loads(cli(*base, "jobs", "--json", "--grid", "smoke", "--group", "whole").out)
    assert len(rows) == 3
    text = cli(*base, "status")
    assert text.code == 0 and "smoke" in text.out and "waits for rois" in text.out
    check = cli(*base, "db", "check", "--json")
    assert check.code == 0 and json.loads(check.out)["problems"] == []


def test_user_errors_are_one_line_with_exit_2(tmp_path: Path, cli, smoke_file: Path) -> None:
    root = tmp_path / "root"
    cases = [
        (["status"], "no memq root given"),
        (["--root", root, "status"], "no memq root here"),
        (["--root", root, "submit", tmp_path / "missing.yaml"], "no such file"),
    ]
    for args, words in cases:
        result = cli(*args)
        assert result.code == 2 and words in result.err and result.err.count("\n") == 1, (args, result)
    assert not root.exists()  # nothing written by failed commands
    cli("--root", root, "submit", smoke_file)
    for args, words in [
        (["cancel", "999"], "unknown job id 999"),
        (["cancel", "x1"], "not a job id"),
        (["retry"], "nothing selected"),
        (["pause", "nope"], "unknown grid 'nope'"),
        (["jobs", "--state", "sleeping"], "unknown state"),
        (["--db-mode", "fast", "status"], "unknown --db-mode"),
        (["--db", "mysql://h/memq", "status"], "error: --db: unsupported database URL scheme 'mysql'"),
        (["--db", "postgresql+psycopg2://h/memq", "status"], "scheme 'postgresql+psycopg2'"),
    ]:
        result = cli("--root", root, *args)
        assert result.code == 2 and words in result.err and result.err.count("\n") == 1, (args, result)


def test_unreachable_database_is_a_user_error_without_password(tmp_path: Path, cli) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    for scheme in ("postgresql+psycopg", "postgresql"):  # plain postgresql:// means memq's driver, psycopg 3
        url = f"{scheme}://alice:s3cret@127.0.0.1:{port}/memq"
        result = cli("--root", tmp_path, "--db", url, "status")
        assert result.code == 2
        assert result.err.startswith("error: postgresql+psycopg://alice:***@127.0.0.1")
        assert "cannot reach the database" in result.err and "s3cret" not in result.err
    # libpq takes secrets in the query string too
    url = f"postgresql://alice@127.0.0.1:{port}/memq?password=s3cret&sslmode=prefer&sslpassword=k3y"
    result = cli("--root", tmp_path, "--db", url, "status")
    assert result.code == 2 and result.err.startswith(
        f"error: postgresql+psycopg://alice@127.0.0.1:{port}/memq?password=***&sslmode=prefer&sslpassword=***: "
        "cannot reach the database"), result.err
    for url in ("postgresql://alice:s3cret@127.0.0.1:port/memq", "postgresql://alice:s3cret@[::1/memq"):
        result = cli("--root", tmp_path, "--db", url, "status")
        assert (result.code, result.err) == (2, "error: --db: not a valid database URL "
                                                "(hint: postgresql+psycopg://USER@HOST[:PORT]/DB[?PARAMETER=VALUE&...])\n")


def test_help_does_not_import_heavy_modules() -> None:
    code = ("import sys; sys.argv=['memq','--help']\n"
            "from memq.cli import main\n"
            "try: main()\nexcept SystemExit: pass\n"
            "heavy=[m for m in ('torch','lightning','timm','sqlalchemy','numpy') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "HEAVY []" in out
    code = code.replace("'--help'", "'status','--help'")
    assert "HEAVY []" in subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout


def test_group_writable_files_only_where_the_root_is(tmp_path: Path, cli, smoke_file: Path) -> None:
    private, shared = tmp_path / "private", tmp_path / "shared"
    private.mkdir(mode=0o700)
    shared.mkdir()
    shared.chmod(0o2770)
    for root in (private, shared):
        assert cli("--root", root, "submit", smoke_file).code == 0
    assert (private / "queue.db").stat().st_mode & 0o077 == 0
    assert (shared / "queue.db").stat().st_mode & 0o070 == 0o060


def test_db_set_mode_converts_the_journal_and_the_recorded_mode(tmp_path: Path, smoke_file: Path) -> None:
    import sqlite3

    root = tmp_path / "root"
    assert memq("--root", root, "--db-mode", "local", "submit", smoke_file).returncode == 0

    def journal() -> str:
        conn = sqlite3.connect(root / "queue.db")
        try:
            return conn.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            conn.close()

    assert journal() == "wal"
    assert memq("--root", root, "db", "set-mode", "shared").returncode == 0
    assert (root / "queue.mode").read_text().strip() == "shared" and journal() == "delete"
    check = json.loads(memq("--root", root, "db", "check", "--json").stdout)
    assert (check["mode"], check["lock"], check["problems"]) == ("shared", "free", [])
    assert memq("--root", root, "db", "set-mode", "local").returncode == 0
    assert (root / "queue.mode").read_text().strip() == "local" and journal() == "wal"
    wrong = memq("--root", root, "db", "set-mode", "wal")
    assert wrong.returncode == 2 and wrong.stderr.startswith("error: unknown mode 'wal'")
    assert (root / "queue.mode").read_text().strip() == "local"


def test_set_mode_shared_lets_a_queue_made_on_a_local_disk_serve_two_hosts(rigs, tmp_path: Path, cli,
                                                                          smoke_file: Path) -> None:
    """A queue started on one host's disk (local mode, WAL) and then copied to the shared mount is
    refused there, with the hint to convert it; converted with `memq db set-mode shared` on the host
    that made it, it serves both hosts of the two-host rig under memq's lock."""
    import shutil

    from memq.store.types import Capacity

    rig = rigs("twohost")
    local = tmp_path / "root"
    assert memq("--root", local, "--db-mode", "local", "submit", smoke_file).returncode == 0
    shutil.copytree(local, rig.roots[0])
    refused = cli("--root", rig.roots[1], "status")
    assert (refused.code, refused.out) == (2, "")
    assert refused.err == (f"error: {rig.roots[1] / 'queue.db'}: database is in local (WAL) mode but this host reaches "
                           "it over a network filesystem (hint: run `memq db set-mode shared` on the host that "
                           "created it)\n")
    shutil.rmtree(rig.roots[0])
    converted = memq("--root", local, "db", "set-mode", "shared")
    assert (converted.returncode, converted.stdout) == (0, f"{local / 'queue.db'}: shared mode\n")
    assert sorted(p.name for p in local.iterdir()) == ["queue.db", "queue.mode", "queue.version"]  # no WAL left
    shutil.copytree(local, rig.roots[0])
    for host in (0, 1):
        check = json.loads(cli(*rig.cli_args(host), "db", "check", "--json").out)
        assert (check["mode"], check["lock"], check["problems"]) == ("shared", "free", [])
    a, b = rig.store(0, create=False), rig.store(1, create=False)  # (each fails unless in shared mode)
    me = a.register_worker("w", "host-a", 1, "boot", [], 1, 60.0)
    claim = a.claim(me, Capacity(slots=1))[1]
    assert (claim.job_id, b.jobs(ids=[claim.job_id])[0]["state"]) == (1, "running")
    assert b.counts()["smoke"]["queued"] == 8 and b.integrity() == []


def test_a_root_that_lost_its_database_is_not_started_afresh(tmp_path: Path, cli, smoke_file: Path) -> None:
    root = tmp_path / "root"
    assert memq("--root", root, "submit", smoke_file).returncode == 0
    db, version = root / "queue.db", root / "queue.version"
    marker = version.read_bytes()
    for lose, state in ((lambda: db.write_bytes(b""), "empty (0 bytes)"), (db.unlink, "missing")):
        lose()
        for args in (["submit", smoke_file], ["status"], ["jobs"]):
            result = cli("--root", root, *args)
            assert result.code == 2 and result.out == "", result
            assert result.err == (
                f"error: {db}: the database file is {state}, but this root has held a queue; memq will not start an "
                f"empty one over its history (hint: restore queue.db from a backup, or give --db if the queue is in "
                f"PostgreSQL; to start an empty queue here, delete {version})\n")
        assert version.read_bytes() == marker
    assert not db.exists()  # the refused submit did not make one
    version.unlink()  # deliberately, as the hint says
    assert "9 jobs added" in cli("--root", root, "submit", smoke_file).out


@pytest.mark.parametrize("mode", ["local", "shared"])
def test_a_damaged_database_is_one_line_and_nothing_is_written(tmp_path: Path, cli, smoke_file: Path,
                                                               mode: str) -> None:
    root = tmp_path / "root"
    assert memq("--root", root, "--db-mode", mode, "submit", smoke_file).returncode == 0
    db, version = root / "queue.db", root / "queue.version"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'jobs'").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    # The jobs table's first page is read by the commands that read job rows: not by `memq status`
    # (its counts come from an index) nor by an unchanged file's resubmit (the grid's row and an index).
    readers = [["submit", "--force", smoke_file], ["jobs"], ["retry", "--failed"]]
    scribbles = [((page - 1) * size, size, "database disk image is malformed", readers),
                 (0, 100, "file is not a database", [*readers, ["submit", smoke_file], ["status"]])]  # the header
    for offset, length, detail, commands in scribbles:
        data = bytearray(db.read_bytes())
        data[offset:offset + length] = random.Random(offset).randbytes(length)
        db.write_bytes(data)
        damaged = (db.read_bytes(), version.read_bytes())
        for args in commands:
            result = cli("--root", root, *args)
            assert result.code == 2 and result.out == "", result
            assert result.err == f"error: {db}: the database is damaged ({detail}); nothing was written " \
                                 "(hint: restore it from a backup)\n"
        assert (db.read_bytes(), version.read_bytes()) == damaged


def test_a_repeated_grid_value_makes_its_jobs_once_with_a_warning(tmp_path: Path, cli) -> None:
    grid = tmp_path / "dup.yaml"
    grid.write_text("name: dup\ndefaults: {command: [echo]}\ngroups:\n  - name: a\n    grid:\n"
                    "      subj: [1, 2]\n      roi:\n        - E\n        - V\n        - E\n")
    warning = (f"warning: {grid}:10: grid axis 'roi' lists \"E\" more than once; it gets its jobs once "
               "(for identical jobs: repeat: N)\n")
    dry = cli("--root", tmp_path / "root", "submit", "--dry-run", "--json", grid)
    assert dry.code == 0 and dry.err == warning
    assert [j["params"] for j in json.loads(dry.out)["jobs"]] == [
        {"subj": s, "roi": r} for s in (1, 2) for r in ("E", "V")]
    done = cli("--root", tmp_path / "root", "submit", grid)
    assert (done.code, done.out, done.err) == (0, "dup: 4 jobs added, 0 already queued\n", warning)


def test_what_grid_files_jobs_and_workers_wrote_is_shown_escaped(tmp_path: Path, cli, monkeypatch) -> None:
    from memq.options import RootOptions
    from memq.root import open_store

    monkeypatch.setenv("COLUMNS", "250")  # (rich wraps cells to the terminal's width)
    grid = tmp_path / "esc.yaml"
    grid.write_text('name: esc\ndefaults: {command: [echo]}\ngroups:\n  - name: g\n'
                    '    params: {title: "\\e]0;pwned\\a\\e[2J", flip: "\\u202eabc", tag: "[/x]"}\n')
    root = tmp_path / "root"
    dry = cli("--root", root, "submit", "--dry-run", grid)
    assert cli("--root", root, "submit", grid).code == 0
    st = open_store(RootOptions(root=str(root)), create=False)
    worker = st.register_worker("w1", "node\x1b[31m", 1, "boot", [], 1, 30.0)
    st.set_worker_state(worker.id, "quarantined", reason="exit 1: \x1b[2J[/y]")
    jobs, status = cli("--root", root, "jobs"), cli("--root", root, "status")
    shown = "title=\\x1b]0;pwned\\x07\\x1b[2J flip=\\u202eabc tag=[/x]"
    for result, words in ((dry, shown), (jobs, shown), (status, "node\\x1b[31m")):
        assert result.code == 0 and result.err == "", result
        assert not any(c in result.out for c in "\x1b\x07\u202e"), result.out
        assert words in result.out, result.out
    assert "quarantined: exit 1: \\x1b[2J[/y]" in status.out


def test_a_watch_interval_must_be_a_positive_number_of_seconds(tmp_path: Path, cli) -> None:
    for value in ("-1", "0", "0.05", "nan", "inf"):  # (0 busy-looped, -1 was an internal error)
        result = cli("--root", tmp_path / "root", "status", "--watch", "--interval", value)
        assert (result.code, result.out) == (2, ""), result
        assert result.err == f"error: --interval: must be a finite number of seconds, at least 0.1; got {value}\n"
    assert not (tmp_path / "root").exists()


def test_root_options_go_before_or_after_the_command(tmp_path: Path, cli, smoke_file: Path) -> None:
    root, other = tmp_path / "root", tmp_path / "other"
    added = cli("submit", smoke_file, "--root", root, "--db-mode", "shared")
    assert added.out == "smoke: 9 jobs added, 0 already queued\n"
    assert (root / "queue.mode").read_text() == "shared\n"
    assert json.loads(cli("status", "--json", "--root", root).out)["counts"]["queued"] == 9
    assert json.loads(cli("--root", root, "status", "--json").out)["counts"]["queued"] == 9
    assert json.loads(cli("--root", other, "jobs", "--json", "--root", root).out)[0]["grid"] == "smoke"  # after wins
    assert cli("db", "check", "--root", root).code == 0  # a command of a group
    assert cli("db", "--root", root, "check").code == 0
    wrong = cli("status", "--root", root, "--db", "mysql://h/memq")
    assert (wrong.code, wrong.err) == (2, "error: --db: unsupported database URL scheme 'mysql' (hint: use "
                                          "postgresql+psycopg://USER@HOST/DB, or omit --db for SQLite in the root)\n")
    assert not other.exists()
