"""`memq status`: what a worker's row implies, grids that ended, jobs no worker can run, failures."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from memq.spec import GridSpec, GroupSpec, JobSpec
from memq.store.types import Capacity, Outcome

from ..conftest import Processes, Rig
from .test_worker import GATED, REPO, jobs_of, start_worker, started, wait_until


def _status(cli, rig: Rig) -> dict:
    result = cli(*rig.cli_args(), "status", "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_a_sigkilled_worker_is_shown_presumed_dead_before_anyone_reaps_it(tmp_path: Path, cli,
                                                                         processes: Processes) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    out = tmp_path / "out"
    out.mkdir()
    store.submit(GridSpec("k", (GroupSpec("g"),), tuple(jobs_of("k", "g", out, [GATED], "gate"))))
    worker = start_worker(processes, rig, 0, "w", tmp_path)
    assert wait_until(lambda: (1, 1) in started(out), 60)
    assert _status(cli, rig)["workers"][0]["presumed_dead"] is None
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    (row,) = _status(cli, rig)["workers"]
    assert row["state"] == "active"
    assert row["presumed_dead"] == f"presumed dead: pid {worker.pid} is gone from this host"
    assert "presumed dead" in cli(*rig.cli_args(), "status").out


def test_a_worker_elsewhere_that_holds_jobs_without_heartbeats_is_presumed_dead(tmp_path: Path, cli) -> None:
    """A row from another host: only the heartbeat's age can speak, and only while it holds jobs."""
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("e", (GroupSpec("g"),), (JobSpec("e", "g", "command", {"i": 1}, command=["true"]),)))
    far = store.register_worker("far", "elsewhere.example", 4242, "other-boot", [], 1, 0.5)
    assert _status(cli, rig)["workers"][0]["presumed_dead"] is None  # idle: no heartbeats expected
    assert store.claim(far, Capacity(slots=1))[1] is not None
    time.sleep(1.2)
    (row,) = _status(cli, rig)["workers"]
    assert re.fullmatch(r"presumed dead: no heartbeat for \d+s, lease 0\.5s", row["presumed_dead"])


def test_a_grid_whose_jobs_all_ended_says_done_and_how(tmp_path: Path, cli) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    specs = tuple(JobSpec("f", "g", "command", {"i": i}, command=["true"], max_attempts=1) for i in range(3))
    store.submit(GridSpec("f", (GroupSpec("g"),), specs))
    me = store.register_worker("rig", socket.gethostname(), os.getpid(), "boot", [], 3, 60.0)
    for i in range(3):
        claim = store.claim(me, Capacity(slots=3))[1]
        assert store.finish(Outcome(claim.job_id, claim.attempt, "succeeded" if i else "failed_final", exit_code=i))
    (grid,) = _status(cli, rig)["grids"]
    assert grid["done"] is True and grid["counts"]["failed"] == 1
    assert "done: 1 failed" in cli(*rig.cli_args(), "status").out


def test_gpu_jobs_no_live_worker_can_run_are_named(tmp_path: Path, cli) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    specs = (JobSpec("gpu", "g", "command", {"i": 1}, command=["true"], gpus=2),
             JobSpec("gpu", "g", "command", {"i": 2}, command=["true"], gpus=1),
             JobSpec("gpu", "g", "command", {"i": 3}, command=["true"]))
    store.submit(GridSpec("gpu", (GroupSpec("g"),), specs))
    (grid,) = _status(cli, rig)["grids"]
    assert grid["unrunnable"] == "2 queued jobs need 2 GPUs; no live worker has more than 0"
    store.register_worker("one-gpu", socket.gethostname(), os.getpid(), "boot", [0], 1, 60.0)
    (grid,) = _status(cli, rig)["grids"]
    assert grid["unrunnable"] == "1 queued job needs 2 GPUs; no live worker has more than 1"


def test_recent_failures_name_grid_group_and_a_permanent_exit(tmp_path: Path, cli) -> None:
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    script = tmp_path / "exit78.py"
    script.write_text("import sys; sys.exit(78)\n")
    store.submit(GridSpec("p", (GroupSpec("bad"),),
                          (JobSpec("p", "bad", "command", {"i": 1}, command=[sys.executable, str(script)]),)))
    cmd = [sys.executable, "-m", "memq", *rig.cli_args(), "worker", "--gpus", "none", "--idle-exit", "1"]
    assert subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
    (failure,) = _status(cli, rig)["recent_failures"]
    assert (failure["grid"], failure["group"], failure["exit_code"], failure["permanent"]) == ("p", "bad", 78, True)
    assert failure["age_s"] is not None and 0 <= failure["age_s"] < 60
    assert "(permanent)" in cli(*rig.cli_args(), "status").out


def test_status_watch_redraws_what_changes_until_interrupted(tmp_path: Path, processes: Processes) -> None:
    """`memq status --watch` on a terminal (a pseudo-terminal here): it draws the queue, draws it
    again when the queue changes, and exits 0 at SIGINT (Ctrl-C)."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    one = (JobSpec("before", "g", "command", {"i": 1}, command=["true"]),)
    store.submit(GridSpec("before", (GroupSpec("g"),), one))
    terminal, their_end = pty.openpty()
    fcntl.ioctl(their_end, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 160, 0, 0))
    interval = 0.2
    watch = processes.start([sys.executable, "-m", "memq", *rig.cli_args(), "status", "--watch", "--interval",
                             str(interval)], stdin=their_end, stdout=their_end, stderr=their_end, cwd=REPO,
                            env={**os.environ, "TERM": "xterm-256color"},
                            # as a terminal's foreground job: a test run in the background (`&`) passes
                            # SIGINT on ignored, and Python keeps it ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(their_end)
    shown = bytearray()

    def read() -> str:
        while select.select([terminal], [], [], 0)[0]:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # (EIO: the other end is closed)
                break
            if not chunk:
                break
            shown.extend(chunk)
        return shown.decode(errors="replace")

    try:
        assert wait_until(lambda: "before" in read(), 60), read()
        drawn = len(shown)
        store.submit(GridSpec("after", (GroupSpec("g"),), tuple(JobSpec("after", "g", "command", {"i": 1},
                                                                         command=["true"]) for _ in range(1))))
        assert wait_until(lambda: "after" in read()[drawn:], interval * 10 + 30), read()[drawn:]
        assert watch.poll() is None
        watch.send_signal(signal.SIGINT)
        # keep reading, as a terminal does: a full pseudo-terminal would block its last redraw
        assert wait_until(lambda: read() is not None and watch.poll() is not None, 30), read()[drawn:]
        assert watch.returncode == 0
        assert "Traceback" not in read()
    finally:
        os.close(terminal)


def test_many_idle_workers_are_counted_in_one_line_and_busy_ones_listed(tmp_path: Path, cli) -> None:
    """A big pool: the table lists the workers that run something and counts the plainly idle ones
    (up to IDLE_LISTED it lists them too); --json lists every worker."""
    from memq.dashboard import IDLE_LISTED

    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    store.submit(GridSpec("m", (GroupSpec("g"),), (JobSpec("m", "g", "command", {"i": 1}, command=["true"]),)))
    busy = store.register_worker("busy", "far.example", 7, "boot", [], 1, 600.0)
    assert store.claim(busy, Capacity(slots=1))[1] is not None
    for i in range(IDLE_LISTED):
        store.register_worker(f"idle{i}", f"node{i % 3}.example", 100 + i, "boot", [], 1, 600.0)
    assert "idle workers" not in cli(*rig.cli_args(), "status").out
    assert "idle0 " in cli(*rig.cli_args(), "status").out
    store.register_worker("one-more", "node9.example", 99, "boot", [], 1, 600.0)
    out = cli(*rig.cli_args(), "status").out
    assert f"{IDLE_LISTED + 1} idle workers on 4 hosts" in out
    assert "busy" in out and "idle0 " not in out and "one-more" not in out
    assert len(_status(cli, rig)["workers"]) == IDLE_LISTED + 2
