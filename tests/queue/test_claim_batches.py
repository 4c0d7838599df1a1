"""Batches of ends and claims in one transaction, on every backend (PostgreSQL runs each batch as
one statement per kind of ending and one claim statement: memq.store.postgres)."""

from __future__ import annotations

from memq.store.types import Outcome

from ..conftest import Rig
from .test_store import CPU, grid, worker


def test_one_transaction_records_outcomes_of_every_kind(rig: Rig) -> None:
    """A batch of ends (PostgreSQL: one statement per kind of ending) does what one finish each does."""
    st = rig.store()
    st.submit(grid(n=6, max_attempts=2))
    me = worker(st)
    _, claims = st.claim_many(me, CPU, [], 6)
    ok, failed, final, lost, requeued, cancelled = claims
    ends = [Outcome(ok.job_id, ok.attempt, "succeeded", exit_code=0, metrics={"best": 2.0}),
            Outcome(failed.job_id, failed.attempt, "failed", exit_code=3, reason="exit code 3", backoff=600.0),
            Outcome(final.job_id, final.attempt, "failed_final", exit_code=4, reason="bad input"),
            Outcome(lost.job_id, lost.attempt, "lost", reason="lost"),
            Outcome(requeued.job_id, requeued.attempt, "requeued", reason="worker drained"),
            Outcome(cancelled.job_id, cancelled.attempt, "cancelled", reason="cancelled"),
            Outcome(ok.job_id, ok.attempt, "succeeded")]  # the same attempt twice: ends once
    accepted, again = st.claim_many(me, CPU, ends, 6)
    assert accepted == [True] * 6 + [False]
    # back in the queue and due: the lost job (no back-off) and the requeued one; the failed one waits 600 s
    assert [(c.job_id, c.attempt) for c in again] == [(lost.job_id, 2), (requeued.job_id, 2)]
    jobs = {j["id"]: j for j in st.jobs()}
    got = {c.job_id: (jobs[c.job_id]["state"], jobs[c.job_id]["failures"], jobs[c.job_id]["crashes"],
                      jobs[c.job_id]["exit_code"]) for c in claims}
    assert got == {ok.job_id: ("succeeded", 0, 0, 0), failed.job_id: ("queued", 1, 0, 3),
                   final.job_id: ("failed", 1, 0, 4), lost.job_id: ("running", 0, 1, None),
                   requeued.job_id: ("running", 0, 0, None), cancelled.job_id: ("cancelled", 0, 0, None)}
    assert jobs[ok.job_id]["metrics"] == {"best": 2.0} and jobs[final.job_id]["reason"] == "bad input"
    ended = {c.job_id: st.attempts(c.job_id)[0] for c in claims}  # (the first attempt of each)
    assert {j: (a["outcome"], a["exit_code"], a["reason"]) for j, a in ended.items()} == {
        ok.job_id: ("succeeded", 0, None), failed.job_id: ("failed", 3, "exit code 3"),
        final.job_id: ("failed", 4, "bad input"), lost.job_id: ("lost", None, "lost"),
        requeued.job_id: ("requeued", None, "worker drained"), cancelled.job_id: ("cancelled", None, "cancelled")}
    assert len({a["ended_at"] for a in ended.values()}) == 1  # one transaction
