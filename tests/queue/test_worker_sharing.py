"""GPU sharing (`resources: {gpus: 0.25, gpu_mem_gb: 16}`, memq/worker/sharing.py): through real
worker processes with GPUs and their memory declared by hand (`--gpus 0,1 --gpu-mem-gb 80`; no NVML
here), the claim statement on every backend, the upgrade of a version 3 database, and bad input.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from memq.grid import load_grid
from memq.spec import GridSpec, GroupSpec, JobSpec
from memq.store.types import Capacity

from ..conftest import CliResult, Processes, Rig
from . import test_worker as tw
from .test_store import DROP_V4_COLUMNS, DROP_V5_COLUMNS, worker
from .test_worker_gpus import _no_nvml, gpus_of  # noqa: F401 - _no_nvml: an autouse fixture

out = tw.out  # the fixture: a directory for the jobs' start and end records


def sharing_shown(cli: Callable[..., CliResult], rig: Rig) -> dict | None:
    """What `memq status --json` says of the one worker's shared GPUs."""
    run = cli(*rig.cli_args(0), "status", "--json")
    assert run.code == 0, run.err
    (only,) = json.loads(run.out)["workers"]
    return only["sharing"]


def test_four_quarter_jobs_share_one_gpu_while_a_whole_gpu_job_takes_the_other(
        tmp_path: Path, out: Path, processes: Processes, cli: Callable[..., CliResult]) -> None:
    """A 1-GPU job and four 0.25 jobs of 16 GB on `--gpus 0,1 --gpu-mem-gb 80`: the four run at once
    on the other GPU (all started before any ended), with one CUDA_VISIBLE_DEVICES, and `memq
    status` says so; a fifth 0.25 job waits, though 16 GB more would fit: the shares are spent."""
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    jobs = (tw.jobs_of("g", "whole", out, [tw.GATED], "gate", gpus=1)
            + tw.jobs_of("g", "shared", out, [tw.GATED] * 5, "gate", gpu_share=0.25, gpu_mem_gb=16))
    store.submit(GridSpec("g", (GroupSpec("whole"), GroupSpec("shared")), tuple(jobs)))
    w = tw.start_worker(processes, rig, 0, "w", tmp_path, "--gpus", "0,1", "--gpu-mem-gb", "80", "--slots", "0")
    assert tw.wait_until(lambda: {(j, 1) for j in range(1, 6)} <= set(tw.started(out)), 60)
    shared = {gpus_of(out, j) for j in range(2, 6)}
    assert len(shared) == 1 and shared != {gpus_of(out, 1)} and shared <= {"0", "1"}
    assert not list(out.glob("*.end"))  # all five run at once
    gpu = shared.pop()
    assert tw.wait_until(lambda: sharing_shown(cli, rig) == {gpu: [4, 1.0]}, 30, step=0.5)
    table = cli(*rig.cli_args(0), "status")
    assert f"GPU {gpu}: 4 jobs, 1 used" in table.out, table.out
    assert (6, 1) not in tw.started(out)  # (the worker claims within POLL; it has had many)
    tw.open_gate(out, 2)
    assert tw.wait_until(lambda: (6, 1) in tw.started(out), 60)
    assert gpus_of(out, 6) == gpu  # the freed quarter, not a GPU of its own
    for job in (1, 3, 4, 5, 6):
        tw.open_gate(out, job)
    assert tw.wait_until(lambda: store.counts()["g"]["succeeded"] == 6, 60)
    assert tw.wait_until(lambda: sharing_shown(cli, rig) is None, 30, step=0.5)
    assert tw.stop([w], tmp_path) == [0]


def test_declared_gpu_memory_bounds_the_packing(tmp_path: Path, out: Path, processes: Processes) -> None:
    """`--gpus 0 --gpu-mem-gb 40`: two 0.25 jobs of 24 GB do not share (48 > 40) though their shares
    would fit: the second starts after the first ended; a job of 50 GB is never claimed."""
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    jobs = (tw.jobs_of("g", "a", out, [0.5, 0.5], gpu_share=0.25, gpu_mem_gb=24)
            + tw.jobs_of("g", "big", out, [0.1], gpu_share=0.25, gpu_mem_gb=50))
    store.submit(GridSpec("g", (GroupSpec("a"), GroupSpec("big")), tuple(jobs)))
    w = tw.start_worker(processes, rig, 0, "w", tmp_path, "--gpus", "0", "--gpu-mem-gb", "40", "--slots", "0",
                        "--idle-exit", "1")
    assert w.wait(timeout=60) == 0
    ends = {job: json.loads((out / f"{job}.1.end").read_text())["end"] for job in (1, 2)}
    starts = {job: record["start"] for (job, _), record in tw.started(out).items()}
    assert sorted(starts) == [1, 2] and starts[2] >= ends[1]
    assert [j["state"] for j in store.jobs()] == ["succeeded", "succeeded", "queued"]


def test_a_shared_job_out_of_gpu_memory_is_requeued_uncharged_once_then_runs_alone(
        tmp_path: Path, out: Path, processes: Processes) -> None:
    """Job 1 (0.5, gated) and job 2 (0.5, says "CUDA out of memory" on its first attempt) share a
    GPU; job 3 (0.5, out of memory every time, one attempt allowed) goes to the other GPU. Jobs 2
    and 3 go back to the queue uncharged, as whole-GPU jobs: job 2's second attempt runs on a GPU
    of its own and succeeds; job 3's runs alone and its out-of-memory is now its own failure."""
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    jobs = (tw.jobs_of("g", "a", out, [tw.GATED], "gate", gpu_share=0.5)
            + tw.jobs_of("g", "b", out, [1.0], "oomfirst", gpu_share=0.5)
            + tw.jobs_of("g", "c", out, [0.1], "oom", gpu_share=0.5, max_attempts=1))
    store.submit(GridSpec("g", (GroupSpec("a"), GroupSpec("b"), GroupSpec("c")), tuple(jobs)))
    w = tw.start_worker(processes, rig, 0, "w", tmp_path, "--gpus", "0,1", "--gpu-mem-gb", "80", "--slots", "0")
    assert tw.wait_until(lambda: store.counts()["g"]["succeeded"] + store.counts()["g"]["failed"] == 2, 60)
    runs = tw.started(out)
    assert runs[(2, 1)]["gpus"] == runs[(1, 1)]["gpus"] != runs[(3, 1)]["gpus"]  # packed first
    assert runs[(2, 2)]["gpus"] != runs[(1, 1)]["gpus"]  # job 1 still runs: job 2 had the other GPU alone
    rows = {j["id"]: j for j in store.jobs()}
    assert [(rows[j]["state"], rows[j]["failures"], rows[j]["crashes"], rows[j]["gpus"], rows[j]["gpu_share"])
            for j in (2, 3)] == [("succeeded", 0, 0, 1, 0.0), ("failed", 1, 0, 1, 0.0)]
    for job, last in ((2, "succeeded"), (3, "failed")):
        first, second = store.attempts(job)
        assert first["outcome"] == "requeued" and "out of GPU memory" in first["reason"]
        assert second["outcome"] == last
    tw.open_gate(out, 1)
    assert tw.wait_until(lambda: store.counts()["g"]["succeeded"] == 2, 60)
    assert tw.stop([w], tmp_path) == [0]


def test_shares_wait_behind_a_waiting_multi_gpu_job(tmp_path: Path, out: Path, processes: Processes) -> None:
    """The hold for a waiting multi-GPU job holds shares too: with half of GPU 0 shared and GPU 1
    busy, a 2-GPU job waits, and the 0.5 job behind it does not pack onto GPU 0 (it would keep
    GPU 0 busy for ever while such jobs keep coming)."""
    rig = Rig("local", [tmp_path / "root"])
    store = rig.store()
    jobs = (tw.jobs_of("g", "a", out, [tw.GATED], "gate", gpu_share=0.5)
            + tw.jobs_of("g", "b", out, [tw.GATED], "gate", gpus=1) + tw.jobs_of("g", "c", out, [0.2], gpus=2)
            + tw.jobs_of("g", "d", out, [0.2], gpu_share=0.5))
    store.submit(GridSpec("g", tuple(GroupSpec(n) for n in "abcd"), tuple(jobs)))
    w = tw.start_worker(processes, rig, 0, "w", tmp_path, "--gpus", "0,1", "--slots", "0", "--claim-ahead", "0")
    assert tw.wait_until(lambda: "holding free GPUs for a waiting 2-GPU job" in tw.log_of(tmp_path, "w"), 60)
    assert tw.wait_until(lambda: {(1, 1), (2, 1)} <= set(tw.started(out)), 60)
    assert (4, 1) not in tw.started(out)  # (it would have been claimed with the claim that started the hold)
    tw.open_gate(out, 1)
    tw.open_gate(out, 2)
    assert tw.wait_until(lambda: store.counts()["g"]["succeeded"] == 4, 60)
    starts = {job: record["start"] for (job, _), record in tw.started(out).items()}
    assert starts[4] > json.loads((out / "3.1.end").read_text())["end"] and gpus_of(out, 3) == "0,1"
    assert tw.stop([w], tmp_path) == [0]


def test_the_claim_packs_shares_and_checks_gpu_memory(rig: Rig) -> None:
    """The claim statement on every backend: a share fits the partly shared GPU's free share and
    memory, or a whole free GPU; whole-GPU jobs need the GPU memory they declare; a CPU slot takes
    no shared job."""
    st = rig.store()
    asks = [(0.5, 40.0), (1 / 3, 10.0), (0.0, 90.0)]  # (share, GB): the last one a 1-GPU job of 90 GB
    st.submit(GridSpec("g", (GroupSpec("a"),), tuple(
        JobSpec("g", "a", "command", {"i": i}, command=["true"], gpus=0 if share else 1, gpu_share=share,
                gpu_mem_gb=mem) for i, (share, mem) in enumerate(asks))))
    me = worker(st, gpus=[0, 1])
    assert st.claim(me, Capacity(slots=4))[1] is None
    assert st.claim(me, Capacity(share=0.25, share_mem=80))[1] is None  # 0.5 and 1/3 exceed a quarter
    third = st.claim(me, Capacity(share=1 / 3, share_mem=80))[1]  # 1/3 fits 1/3 left (no rounding trap)
    assert (third.job_id, third.gpu_share, third.gpu_mem_gb) == (2, pytest.approx(1 / 3), 10.0)
    assert st.claim(me, Capacity(share=0.5, share_mem=39))[1] is None  # the share fits, its 40 GB do not
    half = st.claim(me, Capacity(gpus=1, whole_share=True, gpu_mem=80))[1]
    assert (half.job_id, half.gpus, half.gpu_share) == (1, 0, 0.5)
    assert st.claim(me, Capacity(gpus=1, gpu_mem=80))[1] is None  # the 90 GB GPU job
    assert st.claim(me, Capacity(gpus=1))[1].job_id == 3  # undeclared GPU memory is not checked


def test_a_version_3_database_is_upgraded_to_gpu_sharing(rig: Rig) -> None:
    """Schema 3 -> 4 adds jobs.gpu_share, jobs.gpu_mem_gb (0 for the jobs already there) and
    workers.sharing; the old jobs run as before and shared jobs can be submitted."""
    st = rig.store()
    st.submit(GridSpec("old", (GroupSpec("a"),), (JobSpec("old", "a", "command", {}, command=["true"], gpus=1),)))
    me = worker(st, gpus=[0])
    statements = [*DROP_V4_COLUMNS, *DROP_V5_COLUMNS, "UPDATE meta SET value = '3' WHERE key = 'schema_version'"]
    st.backend.run(lambda conn: [conn.execute(sa.text(sql)) for sql in statements])

    upgraded = rig.store(create=False)
    version = upgraded.backend.run(lambda conn: conn.execute(
        sa.text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar_one(), write=False)
    assert version == "5"
    assert [(j["gpus"], j["gpu_share"], j["gpu_mem_gb"]) for j in upgraded.jobs()] == [(1, 0.0, 0.0)]
    upgraded.submit(GridSpec("new", (GroupSpec("a"),), (
        JobSpec("new", "a", "command", {}, command=["true"], gpu_share=0.5, gpu_mem_gb=8),)))
    assert upgraded.claim(me, Capacity(gpus=1, whole_share=True, gpu_mem=80))[1].gpus == 1  # the old job first
    assert upgraded.claim(me, Capacity(share=0.5, share_mem=80))[1].gpu_share == 0.5
    upgraded.set_sharing(me.id, {"0": [1, 0.5]})
    assert upgraded.workers()[0]["sharing"] == {"0": [1, 0.5]}


@pytest.mark.parametrize(("resources", "said"), [
    ("{gpus: 0.3}", "groups[0].resources.gpus: value error, 0.3 gpus is neither a whole number nor a share"),
    ("{gpus: 1.5}", "groups[0].resources.gpus: value error, 1.5 gpus is neither"),
    ("{gpus: 0.05}", "groups[0].resources.gpus: value error, 0.05 gpus is neither"),  # 1/20: below 1/16
    ("{gpus: 0.25, gpu_mem_gb: -1}", "groups[0].resources.gpu_mem_gb: input should be greater than or equal to 0"),
    ("{gpus: 0, gpu_mem_gb: 16}", "resources.gpu_mem_gb is GPU memory, for a job with GPUs"),
])
def test_bad_gpu_resources_say_one_line_and_exit_2(resources: str, said: str, tmp_path: Path,
                                                   cli: Callable[..., CliResult]) -> None:
    run = cli("--root", tmp_path / "root", "submit", grid_file(tmp_path, resources))
    assert run.code == 2 and run.err.startswith(f"error: {tmp_path / 'g.yaml'}:") and said in run.err, run.err
    assert run.err.count("\n") == 1 and not (tmp_path / "root").exists()  # nothing written


@pytest.mark.parametrize(("gpus", "share"), [(0.5, 0.5), (1 / 3, 1 / 3), (0.333333, 1 / 3), (0.0625, 1 / 16), (2, 0)])
def test_a_share_of_one_gpu_is_a_fraction_that_divides_it(gpus: float, share: float, tmp_path: Path) -> None:
    (job,) = load_grid(grid_file(tmp_path, f"{{gpus: {gpus}, gpu_mem_gb: 8}}")).jobs
    assert (job.gpus, job.gpu_share, job.gpu_mem_gb) == ((0, pytest.approx(share)) if share else (gpus, 0.0)) + (8,)


def test_a_dry_run_shows_the_share(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    run = cli("submit", grid_file(tmp_path, "{gpus: 0.25, gpu_mem_gb: 16}"), "--dry-run", "--json")
    assert run.code == 0, run.err
    assert [(j["gpus"], j["gpu_mem_gb"]) for j in json.loads(run.out)["jobs"]] == [(0.25, 16.0)]


def grid_file(tmp: Path, resources: str) -> Path:
    grid = tmp / "g.yaml"
    grid.write_text(f"name: g\ngroups:\n  - name: a\n    command: [\"true\"]\n    resources: {resources}\n")
    return grid


def test_a_gpu_memory_of_zero_is_refused(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    run = cli("--root", tmp_path / "root", "worker", "--gpus", "0", "--gpu-mem-gb", "0", "--scratch", tmp_path)
    assert run.code == 2 and run.err.startswith("error: --gpu-mem-gb 0:"), run.err
    assert run.err.count("\n") == 1 and not (tmp_path / "root").exists()


def test_the_runner_knows_torch_out_of_memory_by_name() -> None:
    """memq.runner exits EXIT_GPU_OOM for torch's OutOfMemoryError without importing torch itself."""
    torch = pytest.importorskip("torch")
    from memq.runner import out_of_gpu_memory

    assert out_of_gpu_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert not out_of_gpu_memory(RuntimeError("CUDA out of memory")) and not out_of_gpu_memory(MemoryError())
