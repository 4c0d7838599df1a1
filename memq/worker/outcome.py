"""How an attempt's end is recorded: success, a requeue that charges nothing, a retry after a
back-off that doubles with each attempt, a final failure (exit code 78), a shared job out of GPU
memory (requeued uncharged to run alone: memq/worker/sharing.py), and when a worker whose jobs keep
failing quarantines itself (a broken GPU must not drain the queue)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from memq.jobenv import EXIT_PERMANENT
from memq.store.types import Claim, Outcome
from memq.worker.protocol import Exited, Fenced, Killed, Unstartable
from memq.worker.sharing import ran_out_of_gpu_memory

MAX_DOUBLINGS = 6


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    note: str  # one line for the worker's log
    quarantine: str | None = None  # why this failure quarantines the worker, the first time


def exit_code(result: object) -> int | None:
    """The job process's exit code (negative: the signal that killed it), if it has one."""
    return result.code if isinstance(result, Exited | Killed) else None


def failure_reason(result: object) -> str:
    code = exit_code(result)
    if code is not None:
        return f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
    if isinstance(result, Unstartable):
        return result.why
    return str(result)  # Gone: the supervisor died


class OutcomePolicy:
    def __init__(self, retry_backoff: float, quarantine_after: int) -> None:
        self.retry_backoff = retry_backoff
        self.quarantine_after = quarantine_after
        self.failures_in_a_row = 0
        self.quarantined: str | None = None  # why, once quarantined

    def backoff(self, attempt: int) -> float:
        """Seconds before a job that failed on its ``attempt``-th try may run again."""
        return self.retry_backoff * 2 ** min(attempt - 1, MAX_DOUBLINGS)

    def judge(self, c: Claim, result: object, *, ending: str | None, elapsed: float, log: Path) -> Verdict:
        """How the attempt ``c`` is recorded: ``result`` is its supervisor's last word (Exited, Killed,
        Fenced, or Gone), ``ending`` why the worker stopped it if it did (requeued, cancelled)."""
        code = exit_code(result)
        name = f"job {c.job_id} attempt {c.attempt}"
        if ending == "requeued" or isinstance(result, Fenced):
            why = "worker stopped" if ending == "requeued" else "lease not renewed in time (worker stalled)"
            return Verdict(Outcome(c.job_id, c.attempt, "requeued", exit_code=code, reason=why),
                           f"{name}: stopped, back to the queue ({why})")
        if ending == "cancelled":
            return Verdict(Outcome(c.job_id, c.attempt, "cancelled", exit_code=code, reason="cancelled"),
                           f"{name}: cancelled")
        if code == 0:
            self.failures_in_a_row = 0
            return Verdict(Outcome(c.job_id, c.attempt, "succeeded", exit_code=0),
                           f"{name}: succeeded in {elapsed:.1f}s")
        reason = failure_reason(result)
        if c.gpu_share > 0 and ran_out_of_gpu_memory(code, log):  # a neighbour's doing as much as its own
            why = f"out of GPU memory on a shared GPU ({reason}): runs on a GPU of its own next"
            return Verdict(Outcome(c.job_id, c.attempt, "requeued_alone", exit_code=code, reason=why),
                           f"{name}: {why}; log: {log}")
        self.failures_in_a_row += 1
        quarantine = None
        if self.failures_in_a_row >= self.quarantine_after and not self.quarantined:
            quarantine = self.quarantined = (f"{self.failures_in_a_row} job failures in a row "
                                             f"(last: job {c.job_id}, {reason})")
        final = code == EXIT_PERMANENT or isinstance(result, Unstartable)
        outcome = Outcome(c.job_id, c.attempt, "failed_final" if final else "failed", exit_code=code, reason=reason,
                          backoff=0.0 if final else self.backoff(c.attempt))
        return Verdict(outcome, f"{name}: failed ({reason}); log: {log}", quarantine)
