"""Fixtures shared by every test: the store rigs (local, shared, two hosts, PostgreSQL) and the CLI.

The two-host rig is one directory mounted twice over sshfs (../shared/tools/twohost-fs); `.ci/run`
exports MEMQ_TWOHOST_A/B (the mounts) and MEMQ_TEST_PG (a PostgreSQL admin URL). Where they are
missing the tests that need them are skipped, unless MEMQ_REQUIRE_RIGS=1 (CI) turns that into a
failure.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from memq.root import RootOptions, open_store
from memq.store.store import Store

RIGS = ("local", "shared", "twohost", "postgres")


def _need(variable: str) -> str:
    value = os.environ.get(variable)
    if not value:
        if os.environ.get("MEMQ_REQUIRE_RIGS") == "1":
            pytest.fail(f"{variable} is not set but MEMQ_REQUIRE_RIGS=1")
        pytest.skip(f"{variable} not set (see .ci/run)")
    return value


@dataclass
class Rig:
    """Where a test's queue lives, and how each simulated host reaches it."""

    kind: str
    roots: list[Path]  # one per host: the same directory seen through different mounts
    db: str | None = None
    mode: str | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def options(self, host: int = 0) -> RootOptions:
        return RootOptions(root=str(self.roots[host % len(self.roots)]), db=self.db, db_mode=self.mode)

    def store(self, host: int = 0, *, create: bool = True) -> Store:
        return open_store(self.options(host), create=create)

    def cli_args(self, host: int = 0) -> list[str]:
        args = ["--root", str(self.roots[host % len(self.roots)])]
        if self.db:
            args += ["--db", self.db]
        if self.mode:
            args += ["--db-mode", self.mode]
        return args

    @property
    def hosts(self) -> int:
        return len(self.roots)


def _pg_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    """A fresh database on the test server; returns its URL and a function that drops it."""
    import sqlalchemy as sa

    name = f"memq_t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + "/" + name

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def make_rig(kind: str, tmp_path: Path) -> Rig:
    if kind == "local":
        return Rig(kind, [tmp_path / "root"], mode="local")
    if kind == "shared":
        return Rig(kind, [tmp_path / "root"], mode="shared")
    if kind == "twohost":
        a, b = Path(_need("MEMQ_TWOHOST_A")), Path(_need("MEMQ_TWOHOST_B"))
        sub = f"t-{uuid.uuid4().hex[:10]}"
        (a / sub).mkdir()
        rig = Rig(kind, [a / sub / "root", b / sub / "root"])
        rig.cleanup.append(lambda: __import__("shutil").rmtree(a / sub, ignore_errors=True))
        return rig
    if kind == "postgres":
        url, drop = _pg_database(_need("MEMQ_TEST_PG"))
        rig = Rig(kind, [tmp_path / "root"], db=url)
        rig.cleanup.append(drop)
        return rig
    raise ValueError(kind)


@pytest.fixture(params=RIGS)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    """Each test using this runs once per backend."""
    made = make_rig(request.param, tmp_path)
    yield made
    for fn in made.cleanup:
        fn()


@pytest.fixture(params=["local", "twohost", "postgres"])
def multihost_rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    """The rigs that matter for races between processes (shared-on-local-disk adds nothing)."""
    made = make_rig(request.param, tmp_path)
    yield made
    for fn in made.cleanup:
        fn()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Run `memq ARGS...` in this process through the real entry point (exit codes included)."""
    from memq.cli import main

    def run(*args: object) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["memq", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


SMOKE = """\
name: smoke
defaults:
  kind: command
  command: ["python", "-c", "import os; print(os.environ['MEMQ_JOB_ID'], '{subj}', '{roi}')"]
  resources: {gpus: 0}
  max_attempts: 3
groups:
  - name: rois
    grid: {subj: [1, 2], roi: [E, V, L]}
  - name: whole
    repeat: 3
    params: {subj: 1, roi: all}
    after: [rois]
"""


@pytest.fixture
def smoke_file(tmp_path: Path) -> Path:
    path = tmp_path / "smoke.yaml"
    path.write_text(SMOKE)
    return path
