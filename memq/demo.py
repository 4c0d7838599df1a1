"""`memq demo`: the whole loop on this machine, no GPU, no downloads.

Submits a small grid, runs a local worker until the queue is empty, and shows the dashboard.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

DEMO_GRID = Path(__file__).resolve().parents[1] / "grids" / "demo.yaml"


def demo(
    root: Annotated[Path, typer.Option(help="Where the demo queue lives.")] = Path("demo-root"),
    fresh: Annotated[bool, typer.Option(help="Start from an empty root.")] = True,
) -> None:
    """Run the demo: submit a grid, work it off with a local worker, show the dashboard."""
    from rich.console import Console

    from memq.dashboard import render, snapshot
    from memq.grid import load_grid
    from memq.options import RootOptions
    from memq.root import open_store
    from memq.worker import Worker, WorkerConfig, default_scratch

    console = Console()
    if fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    grid_file = DEMO_GRID
    store = open_store(RootOptions(root=str(root)), create=True)
    result = store.submit(load_grid(grid_file))
    console.print(f"[bold]1. submit[/]: {grid_file.name} -> {result.added} jobs in {root}/queue.db")
    console.print("[bold]2. worker[/]: one local worker, 3 CPU slots, until the queue is empty")
    config = WorkerConfig(name="demo-worker", slots=3, idle_exit=1.5, poll=0.2, heartbeat=1, lease=10,
                          scratch=default_scratch(), retry_backoff=1)
    Worker(store, config, out=console.file).run()
    console.print("[bold]3. status[/]")
    console.print(render(snapshot(store)))
    console.print(f"logs: memq --root {root} logs JOB_ID    jobs: memq --root {root} jobs")
