"""Multi-GPU jobs on nodes shared with 1-GPU jobs: `memq worker --gpus 0-3 --multi-gpu 0,1` and the
hold for a waiting multi-GPU job, through real worker processes with GPUs declared by hand (no
NVML here: a worker takes `--gpus` on trust), and the two store statements they rest on.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from memq.gpus import Nvml
from memq.spec import GridSpec, GroupSpec, JobSpec
from memq.store.types import Capacity
from memq.worker.pools import GpuPools

from ..conftest import Processes, Rig
from . import test_worker as tw
from .test_cli import memq
from .test_store import worker

out = tw.out  # the fixture: a directory for the jobs' start and end records


@pytest.fixture(autouse=True)
def _no_nvml() -> None:
    if Nvml().available:
        pytest.skip("this node has NVML; the tests declare GPUs it does not have")


def gpus_of(out: Path, job: int) -> str:
    return tw.started(out)[(job, 1)]["gpus"]


def test_claims_respect_the_fewest_gpus_and_the_first_gpu_job_is_found(rig: Rig) -> None:
    """The claim statement's ``min_gpus`` and the hold's query (first GPU job in claim order that a
    worker of so many GPUs could run), on every backend."""
    st = rig.store()
    asks = [0, 1, 4, 2, 8]
    st.submit(GridSpec("g", (GroupSpec("a"),), tuple(
        JobSpec("g", "a", "command", {"i": i}, command=["true"], gpus=n) for i, n in enumerate(asks))))
    me = worker(st, gpus=[0, 1, 2, 3])
    assert st.waiting_gpus(4) == 1 and st.waiting_gpus(8) == 1
    assert st.waiting_gpus(4, ("other",)) is None
    assert st.claim(me, Capacity(gpus=3, min_gpus=2))[1].gpus == 2  # passes over the 1 and the 4
    assert st.claim(me, Capacity(gpus=1, min_gpus=2))[1] is None
    assert st.claim(me, Capacity(gpus=1))[1].gpus == 1
    assert st.waiting_gpus(4, ("g",)) == 4 and st.waiting_gpus(3) is None  # the 8 fits no 4-GPU worker
    assert st.waiting_gpus(8) == 4


@pytest.mark.parametrize(("free", "n", "want"), [
    ([0, 1, 2, 3, 4, 5, 6, 7], 2, [0, 1]),  # from the multi-GPU pool, aligned
    ([1, 2, 3, 4, 5, 6, 7], 2, [2, 3]),  # the aligned pair, not 1-2
    ([1, 2, 4, 5, 6, 7], 2, [1, 2]),  # consecutive when no aligned pair is free in the pool
    ([4, 5, 6, 7], 4, [4, 5, 6, 7]),  # the multi-GPU pool is busy: the general one
    ([0, 1, 2, 3, 5, 7], 1, [5]),  # never the multi-GPU pool for one GPU
    ([0, 4, 5, 6], 1, [6]),  # where its pair (6-7) is already broken, keeping 4-5 whole
])
def test_a_job_gets_gpus_of_one_pool_in_blocks(free: list[int], n: int, want: list[int]) -> None:
    assert GpuPools.of(list(range(8)), [0, 1, 2, 3]).pick(free, n) == want


def test_a_multi_gpu_pool_runs_only_multi_gpu_jobs(tmp_path: Path, out: Path, processes: Processes) -> None:
    """`--gpus 0-3 --multi-gpu 0,1`: 1-GPU jobs run on GPUs 2 and 3 only, and a third waits though
    GPUs 0 and 1 are free; a 2-GPU job gets 0,1, and another 2-GPU job runs on 2,3 while the
    multi-GPU pool is busy."""
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    jobs = (tw.jobs_of("g", "one", out, [tw.GATED] * 3, "gate", gpus=1)
            + tw.jobs_of("g", "two", out, [tw.GATED] * 2, "gate", gpus=2))
    store.submit(GridSpec("g", (GroupSpec("one"), GroupSpec("two")), tuple(jobs)))
    w = tw.start_worker(processes, rig, 0, "w", tmp_path, "--gpus", "0-3", "--multi-gpu", "0,1", "--slots", "0")
    assert tw.wait_until(lambda: {(1, 1), (2, 1), (4, 1)} <= set(tw.started(out)), 60)
    assert sorted([gpus_of(out, 1), gpus_of(out, 2)]) == ["2", "3"] and gpus_of(out, 4) == "0,1"
    time.sleep(5 * tw.POLL)  # a worker that put job 3 on the multi-GPU pool would have done it by now
    assert (3, 1) not in tw.started(out)
    tw.open_gate(out, 1)
    assert tw.wait_until(lambda: (3, 1) in tw.started(out), 60)
    assert gpus_of(out, 3) == gpus_of(out, 1) and (5, 1) not in tw.started(out)
    tw.open_gate(out, 2)
    tw.open_gate(out, 3)
    assert tw.wait_until(lambda: (5, 1) in tw.started(out), 60)
    assert gpus_of(out, 5) == "2,3" and not (out / "4.1.end").exists()
    tw.open_gate(out, 4)
    tw.open_gate(out, 5)
    assert tw.wait_until(lambda: store.counts()["g"]["succeeded"] == 5, 60)
    assert tw.stop([w], tmp_path) == [0]
    assert "multi-GPU pool 0,1" in tw.log_of(tmp_path, "w")


@pytest.mark.parametrize("hold", [True, False])
def test_a_waiting_4_gpu_job_is_not_starved_by_1_gpu_jobs(hold: bool, tmp_path: Path, out: Path,
                                                           processes: Processes) -> None:
    """Four GPUs busy with 1-GPU jobs, then a 4-GPU job and six more 1-GPU jobs, all of one
    priority. With the hold the 4-GPU job runs as soon as the first four are done, before any later
    1-GPU job; with --no-hold-for-multi-gpu each freed GPU goes to a 1-GPU job and the 4-GPU job
    waits until all of them have started."""
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    # the first four end 0.3 s apart, and so do those that follow them on each GPU: never are all four
    # GPUs free at one claim by chance, which would start the 4-GPU job without the hold
    jobs = (tw.jobs_of("g", "a", out, [1.0, 1.3, 1.6, 1.9], gpus=1) + tw.jobs_of("g", "b", out, [1.0], gpus=4)
            + tw.jobs_of("g", "c", out, [1.0] * 6, gpus=1))
    store.submit(GridSpec("g", (GroupSpec("a"), GroupSpec("b"), GroupSpec("c")), tuple(jobs)))
    w = tw.start_worker(processes, rig, 0, "w", tmp_path, "--gpus", "0-3", "--slots", "0",
                        *([] if hold else ["--no-hold-for-multi-gpu"]))
    assert tw.wait_until(lambda: store.counts()["g"]["succeeded"] == 11, 120)
    assert tw.stop([w], tmp_path) == [0]
    starts = {job: record["start"] for (job, _), record in tw.started(out).items()}
    later = [starts[job] for job in range(6, 12)]
    assert gpus_of(out, 5) == "0,1,2,3"
    if hold:
        assert starts[5] < min(later)
        assert "holding free GPUs for a waiting 4-GPU job" in tw.log_of(tmp_path, "w")
    else:
        assert starts[5] > max(later)


def test_the_gpus_a_multi_gpu_job_frees_are_all_filled_at_once(tmp_path: Path, out: Path,
                                                               processes: Processes) -> None:
    """A 4-GPU job ends: four waiting 1-GPU jobs start together, not one per job end."""
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    jobs = tw.jobs_of("g", "a", out, [0.5], gpus=4) + tw.jobs_of("g", "b", out, [tw.GATED] * 4, "gate", gpus=1)
    store.submit(GridSpec("g", (GroupSpec("a"), GroupSpec("b")), tuple(jobs)))
    w = tw.start_worker(processes, rig, 0, "w", tmp_path, "--gpus", "0-3", "--slots", "0")
    assert tw.wait_until(lambda: {(j, 1) for j in range(1, 6)} <= set(tw.started(out)), 60)
    assert sorted(gpus_of(out, j) for j in range(2, 6)) == ["0", "1", "2", "3"]
    for job in range(2, 6):
        tw.open_gate(out, job)
    assert tw.wait_until(lambda: store.counts()["g"]["succeeded"] == 5, 60)
    assert tw.stop([w], tmp_path) == [0]


def test_a_worker_stops_holding_once_another_worker_takes_the_waiting_job(
        tmp_path: Path, out: Path, processes: Processes) -> None:
    """Worker a (GPUs 0,1) runs a 1-GPU job and holds its free GPU for the 2-GPU job behind it;
    worker b takes that job, and a runs the next 1-GPU job on its free GPU within a heartbeat or
    so, not when its own job ends."""
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    jobs = (tw.jobs_of("g", "a", out, [tw.GATED], "gate", gpus=1)
            + tw.jobs_of("g", "b", out, [tw.GATED], "gate", gpus=2) + tw.jobs_of("g", "c", out, [0.1], gpus=1))
    store.submit(GridSpec("g", (GroupSpec("a"), GroupSpec("b"), GroupSpec("c")), tuple(jobs)))
    a = tw.start_worker(processes, rig, 0, "a", tmp_path, "--gpus", "0,1", "--slots", "0")
    assert tw.wait_until(lambda: "holding free GPUs for a waiting 2-GPU job" in tw.log_of(tmp_path, "a"), 60)
    b = tw.start_worker(processes, rig, 0, "b", tmp_path, "--gpus", "0,1", "--slots", "0", "--max-jobs", "1")
    assert tw.wait_until(lambda: (2, 1) in tw.started(out), 60)
    assert tw.wait_until(lambda: (3, 1) in tw.started(out), 60)
    assert not (out / "1.1.end").exists() and gpus_of(out, 3) != gpus_of(out, 1)
    assert "no longer holding GPUs" in tw.log_of(tmp_path, "a")
    tw.open_gate(out, 1)
    tw.open_gate(out, 2)
    assert tw.wait_until(lambda: store.counts()["g"]["succeeded"] == 3, 60)
    assert b.wait(timeout=60) == 0  # (--max-jobs 1)
    assert tw.stop([a], tmp_path) == [0]


@pytest.mark.parametrize(("args", "said"), [
    (["--gpus", "0-x"], "error: --gpus: '0-x' is not a list of GPU indices"),
    (["--gpus", "3-1"], "error: --gpus: '3-1' is not a GPU index or a range"),
    (["--gpus", "0-3", "--multi-gpu", "2-5"], "error: --multi-gpu: GPU 4 is not one of the worker's GPUs"),
    (["--gpus", "0-3", "--multi-gpu", "2"], "error: --multi-gpu: a pool of one GPU could run no multi-GPU job"),
    (["--gpus", "none", "--multi-gpu", "0,1"], "error: --multi-gpu: GPU 0 is not one of the worker's GPUs (none)"),
])
def test_bad_gpu_options_say_one_line_and_exit_2(args: list[str], said: str, tmp_path: Path) -> None:
    run = memq("--root", tmp_path / "root", "worker", *args, env={"MEMQ_SCRATCH": str(tmp_path)})
    assert run.returncode == 2 and run.stderr.startswith(said) and run.stderr.count("\n") == 1, run.stderr
    assert not (tmp_path / "root").exists()  # nothing written


def test_the_slurm_script_passes_the_multi_gpu_pool(tmp_path: Path) -> None:
    """deploy/slurm/memq-worker.sbatch: MEMQ_MULTI_GPU becomes `--multi-gpu`, before the extra args."""
    script = tw.REPO / "deploy" / "slurm" / "memq-worker.sbatch"
    env = {**os.environ, "MEMQ_ROOT": str(tmp_path), "MEMQ_DRY_RUN": "1"}
    argv = shlex.split(subprocess.run(["bash", str(script), "--slots", "4"], env={**env, "MEMQ_MULTI_GPU": "0-3"},
                                      capture_output=True, text=True, check=True).stdout)
    assert argv[-4:] == ["--multi-gpu", "0-3", "--slots", "4"]
    plain = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=True).stdout
    assert "--multi-gpu" not in plain
