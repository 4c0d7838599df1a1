"""How many jobs a worker claims in one transaction.

On a shared filesystem a transaction costs about the same whatever it writes (on the two-host rig
~12 ms: the lock, SQLite's journal and its syncs), so a stream of short jobs is cheaper when one
transaction records the jobs that ended and claims the next few. A worker claims ahead only as much
work as it would run within ``window`` seconds, judged by how long its recent jobs ran: jobs of
minutes or hours are claimed one at a time, and a worker never keeps more than about ``window``
seconds of work from the others. Claimed-ahead jobs are ordinary running jobs of this worker (its
heartbeat renews them); a worker that stops gives back those it has not started, uncharged.
"""

from __future__ import annotations

WINDOW = 1.0  # seconds of work a worker may claim ahead (the `memq worker --claim-ahead` default)
MOST = 16  # jobs per transaction at most
_WEIGHT = 0.3  # of the newest run time in the running mean


class ClaimAhead:
    """A running mean of job run times, and the batch size it allows."""

    def __init__(self, window: float = WINDOW, most: int = MOST) -> None:
        self.window = window
        self.most = most
        self.mean: float | None = None

    def ran(self, seconds: float) -> None:
        """A job of this worker ended after ``seconds``."""
        self.mean = seconds if self.mean is None else (1 - _WEIGHT) * self.mean + _WEIGHT * seconds

    def batch(self) -> int:
        """How many jobs to claim now: 1 until a job has run, or when claiming ahead is off."""
        if self.window <= 0 or self.mean is None:
            return 1
        return max(1, min(self.most, int(self.window / max(self.mean, self.window / self.most))))
