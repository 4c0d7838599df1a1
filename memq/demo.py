"""`memq demo`: the winning recipe end to end on this machine, no GPU, no downloads.

1. synthetic data in the training layout, with a planted voxel-wise map (`memq data synth`);
2. `memq submit grids/demo.yaml`: 19 tiny Mem models - the whole brain, 9 stream ROIs, 9 random ROIs;
3. a local worker trains them; each job registers its top checkpoints and syncs them;
4. `memq ensemble`: greedy soups, predictions, stitching and averaging into a submission;
5. `memq score` against the synthetic truth, and `memq report` (an HTML page).

memq knows nothing of Mem: every Mem step goes through the `memq` command line or the queue.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

DEMO_GRID = Path(__file__).resolve().parents[1] / "grids" / "demo.yaml"


def _memq(*args: str, quiet: bool = True) -> str:
    """Run a `memq` subcommand (the Mem commands are plugins); fail the demo if it fails."""
    done = subprocess.run([sys.executable, "-m", "memq", *args], capture_output=quiet, text=True)
    if done.returncode != 0:
        typer.echo((done.stderr or "").strip(), err=True)
        raise typer.Exit(done.returncode)
    return done.stdout or ""


def _wait_for_grid(store: object, grid: str) -> None:
    """A progress bar until every job of ``grid`` has ended."""
    from rich.progress import Progress

    with Progress(transient=False) as progress:
        task = progress.add_task(f"training {grid}", total=None)
        while True:
            counts = store.counts()[grid]  # type: ignore[attr-defined]
            done = counts["succeeded"] + counts["failed"] + counts["cancelled"]
            progress.update(task, total=sum(counts.values()), completed=done)
            if done == sum(counts.values()):
                break
            time.sleep(1.0)
    if counts["failed"]:
        typer.echo(f"error: {counts['failed']} training jobs failed (memq jobs --state failed)", err=True)
        raise typer.Exit(1)


def demo(
    root: Annotated[Path, typer.Option(help="Where the demo queue, data and outputs live.")] = Path("demo-root"),
    fresh: Annotated[bool, typer.Option(help="Start from an empty root.")] = True,
    slots: Annotated[int, typer.Option(help="Jobs run at once (CPU).")] = 2,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="KEY=VALUE added to every training job's params (e.g. COMPAT=reference)."),
    ] = None,
) -> None:
    """Run the demo: synthetic data, 19 Mem models, soups, ensemble, score and report."""
    from rich.console import Console
    from rich.table import Table

    from memq.dashboard import render, snapshot
    from memq.grid import load_grid
    from memq.options import RootOptions
    from memq.overrides import parse_overrides
    from memq.root import open_store

    console = Console()
    started = time.monotonic()
    if fresh and root.exists():
        shutil.rmtree(root)
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    data, out, report = root / "data", root / "ensemble", root / "report"
    base = ["--root", str(root)]

    console.print("[bold]1. data[/]: memq data synth --out", data)
    said = _memq("data", "synth", "--out", str(data)).strip().splitlines()[-1]
    console.print("   " + said)
    store = open_store(RootOptions(root=str(root)), create=True)
    overrides = {"DATASET.DIR": str(data), **parse_overrides(sets or [])}
    result = store.submit(load_grid(DEMO_GRID, overrides, root))
    console.print(f"[bold]2. submit[/]: {DEMO_GRID.name} -> {result.added} Mem training jobs")

    log = (root / "worker.log").open("ab")
    worker = subprocess.Popen([sys.executable, "-m", "memq", *base, "worker", "--gpus", "none", "--slots",
                               str(slots), "--poll", "0.5", "--heartbeat", "2", "--lease", "30",
                               "--retry-backoff", "2", "--name", "demo-worker"], stdout=log, stderr=log)
    try:
        console.print(f"[bold]3. worker[/]: one local worker with {slots} CPU slots (log: {root / 'worker.log'})")
        _wait_for_grid(store, "demo")
        console.print("[bold]4. ensemble[/]: soups, predictions, stitching, averaging")
        _memq(*base, "ensemble", str(DEMO_GRID), "--out", str(out), quiet=False)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=120)
    console.print(render(snapshot(store, with_groups=False)))

    table = Table(title=f"best validation Pearson r per model ({said.split(': ', 1)[-1]})", title_justify="left")
    for col in ("job", "atlas", "ROIs", "val_pearson", "epochs"):
        table.add_column(col)
    for job in store.jobs(grid="demo"):
        metrics = job["metrics"] or {}
        r = metrics.get("val_pearson")
        table.add_row(str(job["id"]), job["group"], ",".join(job["params"].get("DATASET.ROIS") or ["whole brain"]),
                      f"{r:.3f}" if r is not None else "-", str(metrics.get("epochs", "-")))
    console.print(table)

    console.print("[bold]5. score[/]: memq score", out, "--truth", data / "truth")
    console.print(_memq("score", str(out), "--truth", str(data / "truth")))
    _memq(*base, "report", "demo", "--out", str(report), "--ensemble", str(out), "--truth", str(data / "truth"))
    console.print(f"[bold]report[/]: {report / 'index.html'}")
    console.print(f"done in {time.monotonic() - started:.0f}s.  try: memq --root {root} status | jobs | logs JOB_ID")
