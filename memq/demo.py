"""`memq demo`: the whole loop on this machine, no GPU, no downloads.

1. synthetic data in the training layout, with a planted voxel-wise map (`memq data synth`);
2. `memq submit grids/demo.yaml`: Mem models (whole brain + three ROI models), tiny widths;
3. a local worker trains them, registering each model's top checkpoints;
4. the dashboard, and each model's best validation correlation against the known ceiling.

memq knows nothing of Mem: every Mem step goes through the `memq` command line or the queue.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

DEMO_GRID = Path(__file__).resolve().parents[1] / "grids" / "demo.yaml"


def _memq(*args: str) -> str:
    """Run a `memq` subcommand (the plugins live there); its output is the demo's output."""
    done = subprocess.run([sys.executable, "-m", "memq", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise typer.Exit(done.returncode) from RuntimeError(done.stderr)
    return done.stdout


def demo(
    root: Annotated[Path, typer.Option(help="Where the demo queue and data live.")] = Path("demo-root"),
    fresh: Annotated[bool, typer.Option(help="Start from an empty root.")] = True,
    slots: Annotated[int, typer.Option(help="Jobs trained at once (CPU).")] = 2,
) -> None:
    """Run the demo: synthetic data, a grid of Mem models, a local worker, the dashboard."""
    from rich.console import Console
    from rich.table import Table

    from memq.dashboard import render, snapshot
    from memq.grid import load_grid
    from memq.options import RootOptions
    from memq.root import open_store
    from memq.worker import Worker, WorkerConfig, default_scratch

    console = Console()
    started = time.monotonic()
    if fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    data = root.resolve() / "data"
    console.print("[bold]1. data[/]: memq data synth --out", data)
    said = _memq("data", "synth", "--out", str(data)).strip().splitlines()[-1]
    console.print("   " + said)
    store = open_store(RootOptions(root=str(root)), create=True)
    result = store.submit(load_grid(DEMO_GRID, {"DATASET.DIR": str(data)}))
    console.print(f"[bold]2. submit[/]: {DEMO_GRID.name} -> {result.added} Mem training jobs in {root}/queue.db")
    console.print(f"[bold]3. worker[/]: one local worker, {slots} CPU slots, until the queue is empty")
    config = WorkerConfig(name="demo-worker", slots=slots, idle_exit=2.0, poll=0.5, heartbeat=2, lease=30,
                          scratch=default_scratch(), retry_backoff=2)
    Worker(store, config, out=console.file).run()
    console.print("[bold]4. status[/]")
    console.print(render(snapshot(store)))
    table = Table(title=f"best validation Pearson r ({said.split(': ', 1)[-1]})", title_justify="left")
    for col in ("job", "group", "ROIs", "state", "val_pearson", "epochs"):
        table.add_column(col)
    for job in store.jobs(grid="demo"):
        metrics = job["metrics"] or {}
        r = metrics.get("val_pearson")
        table.add_row(str(job["id"]), job["group"], ",".join(job["params"].get("DATASET.ROIS") or ["whole brain"]),
                      job["state"], f"{r:.3f}" if r is not None else "-", str(metrics.get("epochs", "-")))
    console.print(table)
    console.print(f"done in {time.monotonic() - started:.0f}s.  logs: memq --root {root} logs JOB_ID   "
                  f"jobs: memq --root {root} jobs --json")
