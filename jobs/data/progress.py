"""Where long data steps report progress: nowhere, a rich progress bar, or the job's dashboard."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memq.job import JobContext

Advance = Callable[[int], None]


class Reporter:
    """Silent: the base class and the default of the library functions."""

    def note(self, message: str) -> None:
        """A line for the user: what was done, skipped or substituted."""

    @contextmanager
    def task(self, what: str, total: int) -> Iterator[Advance]:
        """A long step of ``total`` units; call the yielded function with the units done since."""
        yield lambda n: None


class ConsoleReporter(Reporter):
    """Notes on stdout and a rich progress bar per task (the `memq data` commands)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(highlight=False)

    def note(self, message: str) -> None:
        self.console.print(message, markup=False, soft_wrap=True)

    @contextmanager
    def task(self, what: str, total: int) -> Iterator[Advance]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.console) as bar:
            task = bar.add_task(what, total=total)
            yield lambda n: bar.advance(task, n)


class JobReporter(Reporter):
    """Notes into the job's log, progress onto the queue dashboard (at most one write per 2 s)."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx

    def note(self, message: str) -> None:
        print(message, flush=True)

    @contextmanager
    def task(self, what: str, total: int) -> Iterator[Advance]:
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            self.ctx.report_progress(force=done == total, step=what, done=done, total=total)

        self.ctx.report_progress(force=True, step=what, done=0, total=total)
        yield advance
