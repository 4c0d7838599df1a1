"""The deploy/ files: syntax, dry runs, and real runs where this machine can do them."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import _need

DEPLOY = Path(__file__).parents[2] / "deploy"
REPO = DEPLOY.parent


def test_slurm_script_starts_one_worker_per_node_and_drains_before_the_limit(tmp_path: Path) -> None:
    script = DEPLOY / "slurm" / "memq-worker.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    directives = dict(line[len("#SBATCH "):].split("=", 1) for line in script.read_text().splitlines()
                      if line.startswith("#SBATCH --") and "=" in line)
    assert directives["--ntasks-per-node"] == "1"
    signal_name, lead = directives["--signal"].split("@")
    assert signal_name.endswith("TERM")
    env = {**os.environ, "MEMQ_ROOT": str(tmp_path), "MEMQ_DRY_RUN": "1", "SLURM_JOB_ID": "77", "MEMQ_GRACE": "200"}
    out = subprocess.run(["bash", str(script), "--grid", "xvbc"], env=env, capture_output=True, text=True)
    argv = shlex.split(out.stdout)
    assert out.returncode == 0 and argv[:3] == ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=0"]
    worker = argv[3:]
    assert worker[0].endswith("/bin/memq") and worker[1] == "worker"
    assert worker[worker.index("--grace") + 1] == "200" and int(lead) > 200
    assert worker[-2:] == ["--grid", "xvbc"] and worker[worker.index("--name") + 1].endswith("-77")
    # The worker options it passes are real ones.
    from typer.main import get_command

    from memq.cli import app

    names = {opt for p in get_command(app).commands["worker"].params for opt in p.opts}
    assert {w for w in worker if w.startswith("--")} <= names
    missing = subprocess.run(["bash", str(script)], env={**env, "MEMQ_ROOT": ""}, capture_output=True, text=True)
    assert missing.returncode != 0 and "MEMQ_ROOT" in missing.stderr


def test_systemd_unit_template() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment, method-assign]
    unit.read(DEPLOY / "systemd" / "memq-worker@.service")
    service = unit["Service"]
    assert service["ExecStart"].split()[:2] == ["/opt/memq/.venv/bin/memq", "worker"]
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    assert service["EnvironmentFile"] == "/etc/memq/%i.env" and service["Restart"] == "on-failure"
    assert int(service["TimeoutStopSec"]) > 30  # longer than the worker's default --grace
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_accepts_the_unit_template(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds nothing to say: every key known, every value parsed (systemd
    only warns about a bad value, e.g. `KillMode=bogus`, and still exits 0, so any output fails)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("MEMQ_REQUIRE_RIGS") == "1":
            pytest.fail("systemd-analyze is not installed but MEMQ_REQUIRE_RIGS=1 (.ci/run installs systemd)")
        pytest.skip("systemd-analyze not installed (Debian package systemd): the unit file is not verified")
    text = (DEPLOY / "systemd" / "memq-worker@.service").read_text()
    # ExecStart names where deploy installs memq; verify wants an executable there: this venv's memq
    memq = Path(sys.executable).parent / "memq"
    assert text.count("/opt/memq/.venv/bin/memq") == 1 and os.access(memq, os.X_OK)
    unit = tmp_path / "memq-worker@.service"
    unit.write_text(text.replace("/opt/memq/.venv/bin/memq", str(memq)))
    verify = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, ""), verify.stderr


def launcher(*args: str, hosts: Path, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DEPLOY / "ssh" / "memq-ssh-workers"), str(hosts), *args],
                          capture_output=True, text=True, timeout=120, **kw)


def test_ssh_launcher_dry_run_quotes_everything(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("node1  # the big one\n\nalice@node2\n")
    out = launcher("start", "--root", "/nfs/my root", "--dry-run", "--", "--gpus", "0,1", "--grid", "x;rm -rf /",
                   hosts=hosts)
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and len(lines) == 2
    ssh = shlex.split(lines[1])
    assert ssh[:4] == ["ssh", "-o", "BatchMode=yes", "alice@node2"]
    remote = shlex.split(ssh[4].split(" nohup ", 1)[1].split(" >>", 1)[0])
    assert remote == ["$HOME/memq/.venv/bin/memq", "worker", "--gpus", "0,1", "--grid", "x;rm -rf /"] or remote[1:] == [
        "worker", "--gpus", "0,1", "--grid", "x;rm -rf /"]
    assert "MEMQ_ROOT='/nfs/my root'" in ssh[4]
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody\n")
    assert launcher("status", "--root", "/r", hosts=empty).returncode == 2


def test_ssh_launcher_starts_and_stops_a_real_worker(tmp_path: Path, smoke_file: Path) -> None:
    """Over the loopback sshd of the two-host rig: start a worker, run a grid, drain it."""
    options = _need("MEMQ_TEST_SSH_OPTS").split(",")
    root = tmp_path / "root"
    assert subprocess.run([sys.executable, "-m", "memq", "--root", str(root), "submit", str(smoke_file)],
                          capture_output=True).returncode == 0
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("root@127.0.0.1\n")
    venv = str(Path(sys.executable).parent.parent)
    common = ["--root", str(root), "--venv", venv, *[a for o in options for a in ("-o", o)]]
    started = launcher("start", *common, "--", "--gpus", "none", "--slots", "3", "--poll", "0.2", "--name", "sshw",
                       hosts=hosts)
    assert started.returncode == 0 and "started" in started.stdout, started
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            done = subprocess.run([sys.executable, "-m", "memq", "--root", str(root), "status", "--json"],
                                  capture_output=True, text=True)
            if '"succeeded":9' in done.stdout:
                break
            time.sleep(0.5)
        assert '"succeeded":9' in done.stdout
        assert "running pid" in launcher("status", *common, hosts=hosts).stdout
    finally:
        assert "stopping" in launcher("stop", *common, hosts=hosts).stdout
    deadline = time.time() + 30
    while "not running" not in launcher("status", *common, hosts=hosts).stdout and time.time() < deadline:
        time.sleep(0.5)
    assert "not running" in launcher("status", *common, hosts=hosts).stdout


def test_postgres_setup_script_makes_a_database_memq_can_use(tmp_path: Path, smoke_file: Path) -> None:
    import sqlalchemy as sa

    admin = _need("MEMQ_TEST_PG").rsplit("/", 1)[0] + "/postgres"
    try:
        engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text("DROP DATABASE IF EXISTS memq WITH (FORCE)"))
        psql_url = admin.replace("postgresql+psycopg://", "postgresql://")
        done = subprocess.run(["psql", psql_url, "-v", "password='s3cret-pw'", "-f",
                               str(DEPLOY / "postgres" / "setup.sql")], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        server = admin.split("@", 1)[1].rsplit("/", 1)[0]
        memq_url = f"postgresql+psycopg://memq:s3cret-pw@{server}/memq"
        run = subprocess.run([sys.executable, "-m", "memq", "--root", str(tmp_path), "--db", memq_url, "submit",
                              str(smoke_file)], capture_output=True, text=True)
        assert run.returncode == 0 and "9 jobs added" in run.stdout, run.stderr
        as_admin = sa.create_engine(admin.rsplit("/", 1)[0] + "/memq")
        with as_admin.connect() as conn:
            owner = conn.execute(sa.text("SELECT tableowner FROM pg_tables WHERE tablename = 'jobs'")).scalar()
        as_admin.dispose()
        assert owner == "memq"
        # the role's own setting: what memq asks for at connect time also holds behind a pooler
        as_memq = sa.create_engine(memq_url)
        with as_memq.connect() as conn:
            assert conn.execute(sa.text("SHOW plan_cache_mode")).scalar() == "force_generic_plan"
        as_memq.dispose()
    finally:
        with sa.create_engine(admin, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(sa.text("DROP DATABASE IF EXISTS memq WITH (FORCE)"))


@pytest.mark.parametrize("grid", ["xvbc.yaml", "topyneck.yaml", "demo.yaml", "mindeye2.yaml", "prepare-nsd.yaml",
                                  "mem-heavy.yaml", "mem-light.yaml", "mem-light-distill.yaml", "replay.yaml"])
def test_shipped_grids_expand(grid: str) -> None:
    from memq.grid import load_grid

    assert load_grid(REPO / "grids" / grid).jobs
