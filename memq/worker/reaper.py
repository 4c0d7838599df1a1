"""Declaring other workers dead: a worker is dead when its heartbeat counter stood still for a whole
lease, as this worker observes it on this host's monotonic clock (no clocks are compared across
hosts). The store then requeues its jobs."""

from __future__ import annotations

import time
from typing import Any


class Reaper:
    def __init__(self, lease: float) -> None:
        self.lease = lease
        self.seen: dict[int, tuple[int, float]] = {}  # other worker -> (counter, when it last moved)
        self.others_busy = True  # another worker may run jobs: keep watching

    def reap(self, store: Any, me: int) -> list[str]:
        """Look at every worker's counter once; returns what to log."""
        now = time.monotonic()
        observed = store.worker_heartbeats()
        self.others_busy = any(n for wid, (_, _, n) in observed.items() if wid != me)
        said = []
        for wid, (counter, _state, n_running) in observed.items():
            if wid == me:
                continue
            seen = self.seen.get(wid)
            if seen is None or seen[0] != counter:
                self.seen[wid] = (counter, now)
                continue
            if n_running and now - seen[1] >= self.lease:
                requeued = store.declare_dead(wid, counter)
                if requeued:
                    said.append(f"worker {wid} missed its lease: requeued jobs {', '.join(map(str, requeued))}")
                self.seen.pop(wid, None)
        return said
