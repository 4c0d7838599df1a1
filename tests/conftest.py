"""Fixtures shared by every test: the store rigs (local, shared, two hosts, PostgreSQL), the processes
a test starts, and the CLI.

The two-host rig is one directory mounted twice over sshfs (../shared/tools/twohost-fs); `.ci/run`
exports MEMQ_TWOHOST_A/B (the mounts) and MEMQ_TEST_PG (a PostgreSQL admin URL). Where they are
missing the tests that need them are skipped, unless MEMQ_REQUIRE_RIGS=1 (CI) turns that into a
failure. A rig checks that it is what it claims to be: the two-host mounts are two sshfs mounts of
one directory, and every store a rig opens is in the mode the rig stands for (the two-host rig
leaves it to memq's detection, so a misdetected filesystem fails the tests).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from memq.root import RootOptions, open_store
from memq.store.store import Store

RIGS = ("local", "shared", "twohost", "postgres")
# The SQLite mode each rig's store must be in (PostgreSQL has none).
RIG_MODES = {"local": "local", "shared": "shared", "twohost": "shared"}
SSHFS = "fuse.sshfs"


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
    mode: str | None = None  # --db-mode given to memq (None: memq decides by the filesystem)
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def options(self, host: int = 0) -> RootOptions:
        return RootOptions(root=str(self.roots[host % len(self.roots)]), db=self.db, db_mode=self.mode)

    def store(self, host: int = 0, *, create: bool = True) -> Store:
        """The store as ``host`` opens it; fails unless it is in the rig's mode (RIG_MODES)."""
        store = open_store(self.options(host), create=create)
        mode, want = store.backend.mode, RIG_MODES.get(self.kind, "postgresql")
        assert mode == want, (f"the {self.kind} rig's store on {self.roots[host % self.hosts]} opened in {mode} mode, "
                              f"not {want}: memq misjudged the filesystem, or the rig is not what it claims")
        return store

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


def mount_types() -> dict[str, str]:
    """Mount point -> filesystem type, from /proc/mounts (the last mount on a point wins)."""
    found = {}
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3:
            found[fields[1].encode().decode("unicode_escape")] = fields[2]
    return found


def _check_two_hosts(a: Path, b: Path, sub: str) -> None:
    """The two mounts are sshfs mounts (each with its own cache and locks) of one directory."""
    types = mount_types()
    for mount in (a, b):
        found = types.get(str(mount.resolve()))
        if found != SSHFS:
            pytest.fail(f"{mount} is not an {SSHFS} mount point (/proc/mounts says {found or 'not mounted'}); "
                        "see .ci/run")
    if a.resolve() == b.resolve() or not (b / sub).is_dir():
        pytest.fail(f"{a} and {b} are not two mounts of one directory; see .ci/run")


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
    """A rig of ``kind``; the caller runs its ``cleanup`` (the fixtures below do)."""
    if kind == "local":
        return Rig(kind, [tmp_path / "root"], mode="local")
    if kind == "shared":
        return Rig(kind, [tmp_path / "root"], mode="shared")
    if kind == "twohost":
        a, b = Path(_need("MEMQ_TWOHOST_A")), Path(_need("MEMQ_TWOHOST_B"))
        sub = f"t-{uuid.uuid4().hex[:10]}"
        (a / sub).mkdir()
        rig = Rig(kind, [a / sub / "root", b / sub / "root"])  # no --db-mode: memq must see a network filesystem
        rig.cleanup.append(lambda: shutil.rmtree(a / sub, ignore_errors=True))
        _check_two_hosts(a, b, sub)
        return rig
    if kind == "postgres":
        url, drop = _pg_database(_need("MEMQ_TEST_PG"))
        rig = Rig(kind, [tmp_path / "root"], db=url)
        rig.cleanup.append(drop)
        return rig
    raise ValueError(kind)


# -- processes a test starts ----------------------------------------------------------------------

def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


class Processes:
    """Every long-lived process a test starts (workers, lock holders, claimers). Each starts in a
    session of its own, so its process group holds it and what it started there (a worker's job
    supervisors); at teardown, whatever the test's outcome, each group is killed."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, argv: list[str], **popen: object) -> subprocess.Popen:
        proc = subprocess.Popen(argv, start_new_session=True, **popen)  # type: ignore[call-overload]
        self.started.append(proc)
        return proc

    def reap(self) -> None:
        """Kill every started process's group. The leader goes first, so that a worker's supervisors
        (told by the kernel that their parent died) stop their jobs' process groups themselves."""
        groups = [proc.pid for proc in self.started]
        for proc in self.started:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # (a stopped process dies too)
            proc.wait()
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(group_members(g) for g in groups):
            time.sleep(0.05)
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        self.started.clear()


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Start long-lived processes through this: they never outlive the test."""
    started = Processes()
    try:
        yield started
    finally:
        started.reap()


@pytest.fixture
def rigs(tmp_path: Path, processes: Processes) -> Iterator[Callable[[str], Rig]]:
    """make(kind) -> a rig, cleaned up after the test's processes are gone."""
    made: list[Rig] = []

    def make(kind: str) -> Rig:
        made.append(make_rig(kind, tmp_path))
        return made[-1]

    yield make
    processes.reap()
    for rig in made:
        for fn in rig.cleanup:
            fn()


@pytest.fixture(params=RIGS)
def rig(request: pytest.FixtureRequest, rigs: Callable[[str], Rig]) -> Rig:
    """Each test using this runs once per backend."""
    return rigs(request.param)


@pytest.fixture(params=["local", "twohost", "postgres"])
def multihost_rig(request: pytest.FixtureRequest, rigs: Callable[[str], Rig]) -> Rig:
    """The rigs that matter for races between processes (shared-on-local-disk adds nothing)."""
    return rigs(request.param)


def as_other_host(name: str, argv: list[str]) -> list[str]:
    """``argv`` run under host name ``name`` (a UTS namespace of its own): what memq records as the
    host in lock markers and worker rows, so that this host cannot judge whether it still runs."""
    if not shutil.which("unshare"):
        if os.environ.get("MEMQ_REQUIRE_RIGS") == "1":
            pytest.fail("unshare (util-linux) is missing but MEMQ_REQUIRE_RIGS=1")
        pytest.skip("unshare (util-linux) is missing")
    return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', name, *argv]


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
