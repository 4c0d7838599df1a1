"""Groups with ``each:`` (memq/each.py): one job per job of another group, each waiting for its own."""

from __future__ import annotations

from pathlib import Path

from memq.dashboard import snapshot
from memq.grid import load_grid
from memq.store.types import Outcome

from ..conftest import Rig
from .test_grid import write
from .test_store import CPU, drain_all, worker

CHAIN = """\
name: chain
defaults: {command: [echo, "{source_job}"]}
groups:
  - name: train
    grid: {roi: [a, b, c]}
    command: [echo, "{roi}"]
  - name: soup
    each: train
  - name: predict
    each: soup
    grid: {split: [val, test]}
  - name: combine
    after: [predict]
    command: [echo, combine]
"""


def test_each_expands_one_job_per_followed_job_and_names_the_chain_s_first_job(tmp_path: Path) -> None:
    spec = load_grid(write(tmp_path, CHAIN))
    by_group: dict[str, list] = {}
    for job in spec.jobs:
        by_group.setdefault(job.group.split(".")[0], []).append(job)
    train, soups, predicts = by_group["train"], by_group["soup"], by_group["predict"]
    assert (len(train), len(soups), len(predicts), len(by_group["combine"])) == (3, 3, 6, 1)
    assert [s.params["source_job"] for s in soups] == [t.key for t in train]
    # a predict job follows a soup job, and still names the trained job the chain started from
    assert [p.params["source_job"] for p in predicts] == [t.key for t in train for _ in ("val", "test")]
    groups = {g.name: g for g in spec.groups}
    for soup, trained in zip(soups, train, strict=True):
        assert groups[soup.group].after_jobs == (trained.key,) and soup.group == f"soup.{trained.key[:10]}"
    for predict in predicts:
        soup = next(s for s in soups if s.params["source_job"] == predict.params["source_job"])
        assert groups[predict.group].after_jobs == (soup.key,)
    assert set(groups["combine"].after) == {p.group for p in predicts} and len(groups["combine"].after) == 3
    assert load_grid(write(tmp_path, CHAIN)).jobs == spec.jobs  # keys are stable


def test_a_follower_waits_for_its_own_job_only(rig: Rig, tmp_path: Path) -> None:
    st = rig.store()
    spec = load_grid(write(tmp_path, CHAIN))
    assert st.submit(spec).added == 13
    by_key = {row["key"]: row for row in st.jobs()}
    me = worker(st, slots=8)
    claims = [st.claim(me, CPU)[1] for _ in range(3)]
    assert {c.group for c in claims} == {"train"}
    assert st.claim(me, CPU)[1] is None  # every follower waits
    first = claims[0]
    st.finish(Outcome(first.job_id, first.attempt, "succeeded"))
    _, soup = st.claim(me, CPU)  # the soup of the first trained job only
    first_key = next(k for k, row in by_key.items() if row["id"] == first.job_id)
    assert soup is not None and soup.group == f"soup.{first_key[:10]}"
    assert st.claim(me, CPU)[1] is None
    st.finish(Outcome(soup.job_id, soup.attempt, "succeeded"))
    predicts = [st.claim(me, CPU)[1] for _ in range(2)]
    assert all(p is not None and by_key_of(st, p.job_id)["params"]["source_job"] == first_key for p in predicts)
    assert st.claim(me, CPU)[1] is None  # the other trained jobs still run; combine waits for all
    for claim in [*claims[1:], *predicts]:
        st.finish(Outcome(claim.job_id, claim.attempt, "succeeded"))
    order = drain_all(st, me)
    assert [by_key_of(st, i)["group"] for i in order][-1] == "combine"
    assert st.counts()["chain"]["succeeded"] == 13
    assert st.submit(spec).added == 0 and st.counts()["chain"]["succeeded"] == 13  # a resubmit adds nothing


def test_a_failed_followed_job_holds_its_followers_only_until_retried(rig: Rig, tmp_path: Path) -> None:
    st = rig.store()
    st.submit(load_grid(write(tmp_path, CHAIN.replace("roi: [a, b, c]", "roi: [a, b]"))))
    me = worker(st, slots=8)
    a, b = st.claim(me, CPU)[1], st.claim(me, CPU)[1]
    st.finish(Outcome(a.job_id, a.attempt, "failed_final", exit_code=1))
    st.finish(Outcome(b.job_id, b.attempt, "succeeded"))
    _, soup_b = st.claim(me, CPU)
    assert soup_b is not None and soup_b.group.startswith("soup.")
    st.finish(Outcome(soup_b.job_id, soup_b.attempt, "succeeded"))
    drain_all(st, me)
    assert st.counts()["chain"] == {"queued": 4, "running": 0, "succeeded": 4, "failed": 1, "cancelled": 0}
    blocked = {g["name"].split(".")[0]: g["blocked"] for g in snapshot(st)["grids"][0]["groups"] if g["blocked"]}
    assert blocked["soup"] == f"blocked: job {a.job_id} failed (memq retry --failed)"
    assert blocked["predict"].startswith("waits for job ") and blocked["combine"].startswith("waits for predict.")
    assert st.retry([a.job_id]) == 1
    drain_all(st, me)
    assert st.counts()["chain"]["succeeded"] == 9


def by_key_of(st, job_id: int) -> dict:
    return st.jobs(ids=[job_id])[0]
