"""Helpers shared by the benchmark scripts: temporary roots, PostgreSQL databases, tables, stats."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PG_ADMIN = os.environ.get("MEMQ_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:55432/postgres")
TWOHOST = os.environ.get("MEMQ_BENCH_TWOHOST", "/mnt/hostA,/mnt/hostB")
# the `memq` command: the venv's console script, or `python -m memq` where it is not installed
MEMQ = ([str(Path(sys.executable).with_name("memq"))] if Path(sys.executable).with_name("memq").exists()
        else [sys.executable, "-m", "memq"])


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: int) -> float:
    """The q-th percentile, interpolated between the samples as the median is (so p50 is the
    median and p90 is never below it); a single sample is every percentile."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def start_together() -> None:
    """Wait until every process of a group is ready (``MEMQ_BENCH_BARRIER``: a folder shared by
    ``MEMQ_BENCH_PEERS`` processes), so that their timed parts run at the same time; no-op when unset."""
    folder, peers = os.environ.get("MEMQ_BENCH_BARRIER"), int(os.environ.get("MEMQ_BENCH_PEERS", "1"))
    if not folder:
        return
    Path(folder, f"ready.{os.getpid()}").touch()
    while len(list(Path(folder).glob("ready.*"))) < peers:
        time.sleep(0.01)


def load1() -> float:
    return os.getloadavg()[0]


def machine_line() -> str:
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) / 2**20:.0f} GiB RAM"
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs{mem}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
            f"at {time.strftime('%Y-%m-%d %H:%M:%S')}; python {sys.version.split()[0]}")


def fsync_ms(directory: str | os.PathLike[str] | None = None, n: int = 5) -> float:
    """Median milliseconds of a 4 KiB write + fdatasync on the disk holding ``directory``: the
    durable-commit floor of the moment (this machine's disk is shared and its latency swings)."""
    fd, path = tempfile.mkstemp(prefix=".fsync-probe-", dir=directory)
    try:
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, os.urandom(4096), 4096 * i)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
        return 1000 * median(times)
    finally:
        os.close(fd)
        os.unlink(path)


def proc_cpu(names: set[str]) -> float:
    """CPU seconds used so far by every process whose name is in ``names`` (with reaped children:
    a PostgreSQL backend's time moves to the postmaster's when it exits)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "stat").read_text()
        except OSError:
            continue
        if raw[raw.index("(") + 1:raw.rindex(")")] not in names:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / tick


HELPERS = {"postgres": {"postgres"}, "twohost": {"sshfs", "ssh", "sshd", "sftp-server"}}


class Cleanup:
    """Things to remove at the end, in reverse order, whatever happened."""

    def __init__(self) -> None:
        self._fns: list[Callable[[], None]] = []

    def add(self, fn: Callable[[], None]) -> None:
        self._fns.append(fn)

    def run(self) -> None:
        while self._fns:
            fn = self._fns.pop()
            try:
                fn()
            except Exception as exc:
                print(f"cleanup: {exc}", file=sys.stderr)


def local_dir(base: str | None, prefix: str, cleanup: Cleanup) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    cleanup.add(lambda: shutil.rmtree(path, ignore_errors=True))
    return path


def twohost_mounts() -> list[Path] | None:
    mounts = [Path(p) for p in TWOHOST.split(",")]
    if len(mounts) != 2 or not all(os.path.ismount(m) for m in mounts):
        return None
    return mounts


def twohost_dir(prefix: str, cleanup: Cleanup) -> list[Path]:
    """One fresh directory on the two-host rig, as each mount sees it."""
    mounts = twohost_mounts()
    if mounts is None:
        raise RuntimeError(f"two-host rig not mounted ({TWOHOST})")
    sub = f"{prefix}{uuid.uuid4().hex[:10]}"
    (mounts[0] / sub).mkdir()
    cleanup.add(lambda: shutil.rmtree(mounts[0] / sub, ignore_errors=True))
    return [m / sub for m in mounts]


def pg_available() -> bool:
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(PG_ADMIN, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def pg_database(cleanup: Cleanup, prefix: str = "memq_bench") -> str:
    """A fresh database on the benchmark server; dropped at cleanup. Returns its URL."""
    import sqlalchemy as sa

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    cleanup.add(drop)
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def timed(argv: list[str], **kwargs: Any) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run a command end to end; seconds and its result (raises if it failed)."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return elapsed, proc


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    if title:
        lines.append(title)
    for k, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True))
                     .rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    return bool(text) and (text[0].isdigit() or text[0] in "-+") and text[-1].isdigit()
