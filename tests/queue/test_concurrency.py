"""Many processes on one queue: every job claimed exactly once, concurrent submits never duplicate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from memq.spec import GridSpec, GroupSpec, JobSpec

from ..conftest import Processes, Rig
from ..waiting import until

REPO = Path(__file__).parents[2]


def spawn(processes: Processes, rig: Rig, host: int, mode: str, *args: str) -> subprocess.Popen:
    root = str(rig.roots[host % rig.hosts])
    return processes.start([sys.executable, "-m", "tests.queue.hammer", mode, root, rig.db or "", rig.mode or "",
                            *args], cwd=REPO)


def test_processes_on_two_hosts_claim_every_job_exactly_once(multihost_rig: Rig, tmp_path: Path,
                                                             processes: Processes) -> None:
    rig = multihost_rig
    n_jobs, n_procs = 300, 6
    store = rig.store()
    jobs = tuple(JobSpec("h", "g", "command", {"i": i}, command=["true"]) for i in range(n_jobs))
    store.submit(GridSpec("h", (GroupSpec("g"),), jobs))
    outs = [tmp_path / f"claims{i}.json" for i in range(n_procs)]
    go = tmp_path / "go"  # all start together: a process started late could find nothing left
    # one to four jobs per transaction (a worker claims several when its jobs are short)
    procs = [spawn(processes, rig, i, "claim", f"w{i}", str(outs[i]), str(go), str(1 + i % 4)) for i in range(n_procs)]
    until("every claimer to be ready", lambda: all(Path(f"{out}.ready").exists() for out in outs), timeout=120)
    go.touch()
    assert [p.wait(timeout=600) for p in procs] == [0] * n_procs
    claims = [tuple(c) for out in outs for c in json.loads(out.read_text())]
    assert len(claims) == n_jobs
    assert sorted(job for job, _ in claims) == sorted(r["id"] for r in store.jobs())
    assert all(attempt == 1 for _, attempt in claims)
    assert store.counts()["h"]["succeeded"] == n_jobs
    assert sum(len(json.loads(o.read_text())) > 0 for o in outs) >= 2  # the work really was shared
    assert store.integrity() == []


def test_concurrent_submits_of_one_grid_never_duplicate(multihost_rig: Rig, tmp_path: Path,
                                                        processes: Processes) -> None:
    rig = multihost_rig
    rig.store()  # the schema exists; the race is on the jobs
    outs = [tmp_path / f"added{i}" for i in range(4)]
    procs = [spawn(processes, rig, i, "submit", "400", str(outs[i])) for i in range(4)]
    assert [p.wait(timeout=600) for p in procs] == [0] * 4
    assert sum(int(o.read_text()) for o in outs) == 400
    store = rig.store(create=False)
    assert store.counts()["same"]["queued"] == 400
    assert store.integrity() == []
