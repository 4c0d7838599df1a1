"""Waiting for a set of jobs: counts per stage and state as they change, until all succeed or one fails.

Polls the store (one short read transaction per interval): the version file is not bumped for
every finished job, so it cannot tell a waiter when to look.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from memq.store.schema import STATES
from memq.store.store import Store

Counts = dict[str, dict[str, int]]  # stage -> state -> number of jobs


class JobsFailed(Exception):
    """Jobs ended failed or cancelled: what waits on them cannot finish."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(rows)} jobs failed or were cancelled")
        self.rows = rows


def counts(rows: list[dict[str, Any]], stages: Mapping[str, str]) -> Counts:
    out: Counts = {stage: dict.fromkeys(STATES, 0) for stage in dict.fromkeys(stages.values())}
    for row in rows:
        out[stages[row["key"]]][row["state"]] += 1
    return out


def wait(store: Store, grid: str, stages: Mapping[str, str], on_update: Callable[[Counts], None],
         interval: float = 2.0) -> list[dict[str, Any]]:
    """Wait until every job of ``grid`` whose key is in ``stages`` succeeded; returns their rows.

    ``on_update`` gets the counts whenever they changed. Raises JobsFailed as soon as one of the
    jobs has failed for good or was cancelled.
    """
    shown: Counts | None = None
    while True:
        rows = [row for row in store.jobs(grid=grid) if row["key"] in stages]
        now = counts(rows, stages)
        if now != shown:
            on_update(now)
            shown = now
        failed = [row for row in rows if row["state"] in ("failed", "cancelled")]
        if failed:
            raise JobsFailed(failed)
        if len(rows) == len(stages) and all(row["state"] == "succeeded" for row in rows):
            return rows
        time.sleep(interval)
