"""`after: [{group: G, match: [params]}]` (memq/after.py, memq/each.py): a job waits for the jobs of G
whose listed params equal its own, and for no other job of G."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memq.grid import load_grid, load_grid_file, upstream_groups
from memq.spec import GridSpec
from memq.store.types import Outcome

from ..conftest import Rig
from .test_grid import write
from .test_store import CPU, worker

# The MindEye2 shape: fine-tunes wait for the pretraining of their subject, inference for its fine-tune.
MIND = """\
name: mind
defaults: {command: [echo]}
groups:
  - name: prepare
  - name: pretrain
    grid: {subj: [1, 2]}
    repeat: 2
  - name: finetune
    grid: {subj: [1, 2], sessions: [1, 40]}
    after: [{group: pretrain, match: [subj]}]
  - name: infer
    grid: {subj: [1, 2], sessions: [1, 40]}
    after: [prepare, {group: finetune, match: [subj, sessions]}]
  - name: report
    after: [finetune]
"""


def _of(spec: GridSpec, group: str) -> list:
    return [job for job in spec.jobs if job.group.split(".")[0] == group]


def test_match_expands_to_one_sub_group_per_matched_values_waiting_for_those_jobs(tmp_path: Path) -> None:
    spec = load_grid(write(tmp_path, MIND))
    groups = {g.name: g for g in spec.groups}
    pretrain, finetune, infer = _of(spec, "pretrain"), _of(spec, "finetune"), _of(spec, "infer")
    assert (len(pretrain), len(finetune), len(infer), len(spec.jobs)) == (4, 4, 4, 14)
    assert {j.group for j in pretrain} == {"pretrain"} and groups["pretrain"].after_jobs == ()
    # finetune: one sub-group per subject, holding its two jobs, after both repeats of its pretraining
    assert len({j.group for j in finetune}) == 2
    for job in finetune:
        group = groups[job.group]
        assert job.group.startswith("finetune.") and len(job.group) == len("finetune.") + 10
        assert sorted(group.after_jobs) == sorted(p.key for p in pretrain if p.params["subj"] == job.params["subj"])
        assert group.after == ()
        assert [j.params["subj"] for j in finetune if j.group == job.group] == [job.params["subj"]] * 2
    # infer: one sub-group per (subj, sessions), after `prepare` as a whole and its own fine-tune
    assert len({j.group for j in infer}) == 4
    for job in infer:
        mine = [f.key for f in finetune if (f.params["subj"], f.params["sessions"]) ==
                (job.params["subj"], job.params["sessions"])]
        assert groups[job.group].after_jobs == tuple(mine) and len(mine) == 1
        assert groups[job.group].after == ("prepare",)
    # `after: [finetune]` waits for every sub-group of finetune
    assert sorted(groups["report"].after) == sorted({j.group for j in finetune})
    assert set(groups) == {"prepare", "pretrain", "report", *(j.group for j in finetune + infer)}
    upstream = upstream_groups(load_grid_file(write(tmp_path, MIND))[0])
    assert (upstream["finetune"], upstream["infer"]) == ({"pretrain"}, {"prepare", "finetune", "pretrain"})
    again = load_grid(write(tmp_path, MIND, "copy.yaml"))  # names and keys are a function of the grid
    assert again.jobs == spec.jobs and again.groups == spec.groups


def test_each_and_match_together_make_a_sub_group_per_followed_job_and_matched_values(tmp_path: Path) -> None:
    text = MIND + """\
  - name: score
    each: finetune
    grid: {subj: [1, 2]}
    after: [{group: pretrain, match: [subj]}]
"""
    spec = load_grid(write(tmp_path, text))
    groups = {g.name: g for g in spec.groups}
    finetune, pretrain, score = _of(spec, "finetune"), _of(spec, "pretrain"), _of(spec, "score")
    assert len(score) == 8 and len({j.group for j in score}) == 8
    for job in score:
        leader = next(f for f in finetune if f.key == job.params["source_job"])
        wanted = {leader.key, *(p.key for p in pretrain if p.params["subj"] == job.params["subj"])}
        assert set(groups[job.group].after_jobs) == wanted and len(groups[job.group].after_jobs) == 3
    # without a match, `each:` sub-groups keep their `<name>.<first 10 hex of the followed key>` names
    plain = load_grid(write(tmp_path, MIND + "  - name: score\n    each: finetune\n", "each.yaml"))
    followed = _of(plain, "finetune")
    assert [j.group for j in _of(plain, "score")] == [f"score.{f.key[:10]}" for f in followed]


def _claimable(st, me) -> list:
    """Claim every job that can start now (the claims stay running)."""
    claims = []
    while (claim := st.claim(me, CPU)[1]) is not None:
        claims.append(claim)
    return claims


def _rows(st, claims) -> dict[int, dict]:
    return {row["id"]: row for row in st.jobs(ids=[c.job_id for c in claims])} if claims else {}


def _described(st, claims) -> list[tuple[str, dict]]:
    """(grid-file group, params) of each claimed job, sorted."""
    rows = _rows(st, claims)
    return sorted(((rows[c.job_id]["group"].split(".")[0], rows[c.job_id]["params"]) for c in claims), key=repr)


def _succeed(st, claims) -> None:
    for claim in claims:
        st.finish(Outcome(claim.job_id, claim.attempt, "succeeded"))


def test_a_job_starts_when_its_matched_jobs_succeeded_and_not_before(rig: Rig, tmp_path: Path) -> None:
    st = rig.store()
    spec = load_grid(write(tmp_path, MIND))
    assert st.submit(spec).added == 14
    me = worker(st, slots=64)
    first = _claimable(st, me)
    assert _described(st, first) == sorted([("prepare", {}), *[("pretrain", {"subj": s}) for s in (1, 1, 2, 2)]],
                                           key=repr)
    rows = _rows(st, first)
    prepare = next(c for c in first if rows[c.job_id]["group"] == "prepare")
    subj1 = [c for c in first if rows[c.job_id]["params"] == {"subj": 1}]
    subj2 = [c for c in first if rows[c.job_id]["params"] == {"subj": 2}]
    _succeed(st, [*subj1, subj2[0]])  # subject 2 has one repeat still running
    assert st.submit(spec).added == 0  # a resubmit in the middle changes nothing
    ft1 = _claimable(st, me)
    assert _described(st, ft1) == [("finetune", {"subj": 1, "sessions": s}) for s in (1, 40)]
    ft11 = next(c for c in ft1 if _rows(st, [c])[c.job_id]["params"]["sessions"] == 1)
    _succeed(st, [ft11])
    assert _claimable(st, me) == []  # infer subj=1 sessions=1 still waits for prepare
    _succeed(st, [prepare])
    assert _described(st, _claimable(st, me)) == [("infer", {"subj": 1, "sessions": 1})]
    _succeed(st, [subj2[1]])
    assert _described(st, _claimable(st, me)) == [("finetune", {"subj": 2, "sessions": s}) for s in (1, 40)]
    assert st.submit(spec).added == 0
    counts = st.counts()["mind"]
    assert (counts["succeeded"], counts["running"], counts["queued"]) == (6, 4, 4)


def test_after_the_whole_group_waits_for_every_sub_group(rig: Rig, tmp_path: Path) -> None:
    st = rig.store()
    st.submit(load_grid(write(tmp_path, MIND)))
    me = worker(st, slots=64)
    _succeed(st, _claimable(st, me))  # prepare and pretrain
    finetunes = _claimable(st, me)
    rows = _rows(st, finetunes)
    last = next(c for c in finetunes if rows[c.job_id]["params"] == {"subj": 2, "sessions": 40})
    _succeed(st, [c for c in finetunes if c is not last])
    infers = _claimable(st, me)
    assert _described(st, infers) == sorted([("infer", {"subj": s, "sessions": n}) for s, n in
                                             ((1, 1), (1, 40), (2, 1))], key=repr)
    _succeed(st, infers)
    assert _claimable(st, me) == []  # report waits for the one fine-tune still running
    _succeed(st, [last])
    assert _described(st, _claimable(st, me)) == [("infer", {"subj": 2, "sessions": 40}), ("report", {})]


MATCH = "[{group: pretrain, match: [subj]}]"
BAD = [  # (text to replace in MIND, what instead, line, the message after FILE:LINE)
    (MATCH, "[{group: pretrian, match: [subj]}]", 10,
     "group 'finetune' is after unknown group 'pretrian' (hint: did you mean 'pretrain'?)"),
    (MATCH, "[{group: infer, match: [subj]}]", 10,
     "group 'finetune': after {group: infer, match: ...} is not a group above it"),
    (MATCH, "[{group: pretrain, match: [sessions]}]", 10,
     "group 'finetune' matches 'sessions', which is not a parameter of group 'pretrain' (hint: params of both: subj)"),
    (MATCH, "[{group: pretrain, match: [subj, seed]}]", 10,
     "group 'finetune' matches 'seed', which is not a parameter of group 'finetune' (hint: params of both: subj)"),
    (MATCH, "[pretrain, {group: pretrain, match: [subj]}]", 10, "group 'finetune' lists 'pretrain' in `after` twice"),
    (MATCH, "[{group: pretrain, match: []}]", 10, "groups[2].after[0].match: list should have at least 1 item"),
    (MATCH, "[{group: pretrain, macth: [subj]}]", 10,
     "unknown key 'macth' in groups[2].after[0] (hint: did you mean 'match'?)"),
    (MATCH, "[{group: pretrain}]", 10, "groups[2].after[0].match: required"),
    ("{subj: [1, 2], sessions", "{subj: [1, 3], sessions", 10,
     "job of finetune with subj=3 matches no job of pretrain (hint: pretrain has subj=1, subj=2)"),
    ("  - name: pretrain\n", "  - name: pretrain\n    after: [infer]\n", 11,
     "dependency cycle: pretrain -> infer -> finetune -> pretrain"),
]


@pytest.mark.parametrize(("old", "new", "line", "words"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_a_bad_match_is_one_line_exit_2_and_nothing_written(tmp_path: Path, cli, old: str, new: str, line: int,
                                                            words: str) -> None:
    assert old in MIND
    bad = write(tmp_path, MIND.replace(old, new, 1))
    root = tmp_path / "root"
    for args in (["submit", bad], ["submit", "--dry-run", bad]):
        result = cli("--root", root, *args)
        assert (result.code, result.out) == (2, ""), result
        lines = result.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {bad}:{line}: {words}"), result.err
    assert not root.exists()


def test_dry_run_lists_every_job_under_its_sub_group(tmp_path: Path, cli) -> None:
    spec = load_grid(write(tmp_path, MIND))
    result = cli("submit", "--dry-run", "--json", write(tmp_path, MIND))
    assert result.code == 0
    assert [j["group"] for j in json.loads(result.out)["jobs"]] == [j.group for j in spec.jobs]
    assert [j["group"].split(".")[0] for j in json.loads(result.out)["jobs"]] == (
        ["prepare"] + ["pretrain"] * 4 + ["finetune"] * 4 + ["infer"] * 4 + ["report"])
    assert "mind: 14 jobs (dry run, nothing written)" in cli("submit", "--dry-run", write(tmp_path, MIND)).out
