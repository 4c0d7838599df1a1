"""Worker commands: `memq worker`, `memq drain`, `memq logs`."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from memq.cli.common import store


def worker(
    ctx: typer.Context,
    gpus: Annotated[str, typer.Option(help="auto (NVML), none, or indices and ranges like 0,1,3 or 0-7.")] = "auto",
    multi_gpu: Annotated[str | None, typer.Option(
        help="A part of --gpus (like 0-3) that runs only jobs asking for 2 or more GPUs; the other GPUs run "
             "any GPU job. A job never spans the two pools. Default: one pool of all GPUs (deploy/README.md).")] = None,
    hold_for_multi_gpu: Annotated[bool, typer.Option(
        help="While the first GPU job in queue order that this worker could run asks for 2+ GPUs and they "
             "are not free, claim no GPU job, so that 1-GPU jobs cannot starve it (CPU slots go on).")] = True,
    slots: Annotated[int, typer.Option(help="How many CPU-only jobs (gpus: 0) may run at once.")] = 1,
    gpu_mem_gb: Annotated[float | None, typer.Option(
        help="Each GPU's memory in GB, for jobs that share a GPU (resources.gpu_mem_gb); default: NVML's "
             "total, and without NVML GPU memory is not checked.")] = None,
    max_jobs: Annotated[int | None, typer.Option(help="Exit after claiming this many jobs.")] = None,
    idle_exit: Annotated[float | None, typer.Option(help="Exit after this many seconds with nothing to run.")] = None,
    poll: Annotated[float, typer.Option(help="Seconds between looks at the queue's version file.")] = 1.0,
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats while running jobs.")] = 10.0,
    lease: Annotated[float, typer.Option(
        help="A worker whose heartbeat stands still this long is dead; its jobs are requeued.")] = 60.0,
    name: Annotated[str | None, typer.Option(help="Worker name (default: the host name).")] = None,
    grid: Annotated[list[str] | None, typer.Option(help="Only claim jobs of these grids (repeatable).")] = None,
    scratch: Annotated[Path | None, typer.Option(
        help="Node-local scratch directory (default: $MEMQ_SCRATCH or $TMPDIR/memq-scratch-UID).")] = None,
    grace: Annotated[float, typer.Option(
        help="On SIGTERM or drain: seconds running jobs get before they are requeued.")] = 30.0,
    retry_backoff: Annotated[float, typer.Option(help="Seconds before a failed job is retried (doubles).")] = 30.0,
    quarantine_after: Annotated[int, typer.Option(
        help="Stop claiming after this many job failures in a row (a broken GPU must not drain the queue).")] = 5,
    max_gpu_util: Annotated[int, typer.Option(help="A GPU busier than this (percent) is left alone.")] = 10,
    max_gpu_mem: Annotated[float, typer.Option(
        help="A GPU with more than this fraction of its memory in use is left alone.")] = 0.1,
    sync_checkpoints: Annotated[bool, typer.Option(
        "--sync/--no-sync", help="Copy a job's checkpoints to the shared store when it succeeds.")] = True,
    claim_ahead: Annotated[float, typer.Option(
        help="While jobs take under a second or so, claim this many seconds of them per transaction "
             "(their ends are recorded together, at most this late); 0: one job at a time.")] = 1.0,
) -> None:
    """Run jobs on this node until stopped: claim, run, heartbeat, recover."""
    from memq.gpus import Nvml, healthy, parse_gpus, parse_indices
    from memq.worker.config import WorkerConfig, default_scratch
    from memq.worker.loop import Worker

    nvml = Nvml()
    gpu_list, said = parse_gpus(gpus, nvml)
    multi = parse_indices(multi_gpu, "--multi-gpu") if multi_gpu is not None else []
    config = WorkerConfig(name=name or socket.gethostname(), gpus=gpu_list, multi_gpu=multi,
                          hold_for_multi_gpu=hold_for_multi_gpu, slots=slots, gpu_mem_gb=gpu_mem_gb, max_jobs=max_jobs,
                          idle_exit=idle_exit, poll=poll, heartbeat=heartbeat, lease=lease, grids=tuple(grid or ()),
                          scratch=scratch or default_scratch(), term_grace=grace, retry_backoff=retry_backoff,
                          quarantine_after=quarantine_after, sync_checkpoints=sync_checkpoints,
                          claim_ahead=claim_ahead)
    config.check()  # before the store: bad options write nothing
    st = store(ctx, create=True)
    typer.echo(f"memq worker {config.name}: {said}; queue {st.backend.display_url()}", err=True)
    run = Worker(st, config, gpu_filter=lambda free: healthy(free, nvml, max_gpu_util, max_gpu_mem), nvml=nvml).run()
    raise typer.Exit(run)


def drain(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The worker's name (see `memq status`).")],
) -> None:
    """Ask a worker, from any host, to stop claiming and requeue its jobs after the grace period."""
    from memq.errors import UserError

    if not store(ctx).request_drain(name):
        raise UserError(f"no running worker named {name!r}", hint="see `memq status`")
    typer.echo(f"{name}: drain requested")


def logs(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing, across attempts, until the job ends.")]
    = False,
    attempt: Annotated[int | None, typer.Option(help="Only this attempt.")] = None,
) -> None:
    """Print a job's log, attempt after attempt."""
    from memq.errors import UserError
    from memq.paths import log_file

    st = store(ctx)
    rows = st.jobs(ids=[job_id])
    if not rows:
        raise UserError(f"unknown job id {job_id}", hint="see `memq jobs`")
    printed: dict[int, int] = {}
    while True:
        job = st.jobs(ids=[job_id])[0]
        attempts = [attempt] if attempt else range(1, job["attempt"] + 1)
        for k in attempts:
            path = log_file(st.root, job["grid"], job_id, k)
            if not path.exists():
                continue
            with path.open("rb") as fh:
                fh.seek(printed.get(k, 0))
                chunk = fh.read()
            if chunk:
                if k not in printed:
                    sys.stdout.write(f"==> job {job_id} attempt {k}: {path} <==\n")
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            printed[k] = printed.get(k, 0) + len(chunk)
        if not follow or job["state"] not in ("queued", "running"):
            return
        time.sleep(1.0)


def sync(
    ctx: typer.Context,
    grid: Annotated[str | None, typer.Option(help="Only this grid's checkpoints.")] = None,
    recheck: Annotated[bool, typer.Option("--verify", help="Re-hash shared copies; replace bad ones.")] = False,
    remote: Annotated[bool, typer.Option(
        "--remote", help="Pull checkpoints of other hosts over ssh (else run sync on those hosts).")] = False,
) -> None:
    """Copy registered checkpoints from node-local scratch to the shared store, verified by sha256."""
    from rich.progress import Progress

    from memq.sync import sync as run_sync

    st = store(ctx)
    with Progress(transient=True) as progress:
        task = progress.add_task("sync", total=None)
        report = run_sync(st, grid=grid, recheck=recheck, remote=remote,
                          on_row=lambda row: progress.advance(task))
    typer.echo(f"copied {len(report.copied)}, already synced {report.already}, "
               f"unreachable {len(report.unreachable)}, corrupt {len(report.corrupt)}")
    for line in report.unreachable + report.corrupt:
        typer.echo(f"  {line}")
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(sync)
    app.command()(worker)
    app.command()(drain)
    app.command()(logs)
