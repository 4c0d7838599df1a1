"""The Store API, run against every backend: local SQLite, shared SQLite, two hosts, PostgreSQL."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest

from memq.spec import GridSpec, GroupSpec, JobSpec
from memq.store.types import Capacity, Outcome, Running

from ..conftest import Rig
from ..waiting import until

CPU = Capacity(slots=1)


def grid(name: str = "g", n: int = 3, *, group: str = "a", after: tuple[str, ...] = (), **job: object) -> GridSpec:
    jobs = tuple(JobSpec(name, group, "command", {"i": i}, command=["true"], **job) for i in range(n))
    return GridSpec(name, (GroupSpec(group, after),), jobs)


def two_groups(n_first: int = 2, n_second: int = 2) -> GridSpec:
    first = [JobSpec("g", "first", "command", {"i": i}, command=["true"]) for i in range(n_first)]
    second = [JobSpec("g", "second", "command", {"i": i}, command=["true"]) for i in range(n_second)]
    return GridSpec("g", (GroupSpec("first"), GroupSpec("second", ("first",))), tuple(first + second))


def worker(store, name: str = "w", slots: int = 1, gpus: list[int] | None = None):
    return store.register_worker(name, "host", 1, "boot", gpus or [], slots, 30.0)


def drain_all(store, me, capacity: Capacity = CPU) -> list[int]:
    """Claim and succeed until nothing is claimable; returns job ids in claim order."""
    order, done = [], None
    while True:
        _, claim = store.claim(me, capacity, done)
        if claim is None:
            return order
        order.append(claim.job_id)
        done = Outcome(claim.job_id, claim.attempt, "succeeded")


def test_submit_is_idempotent_and_edits_add_only_new_jobs(rig: Rig) -> None:
    st = rig.store()
    first = st.submit(grid(n=3))
    assert (first.added, first.existing) == (3, 0)
    assert st.submit(grid(n=3)).added == 0
    more = st.submit(grid(n=5))
    assert (more.added, more.existing) == (2, 3)
    edited = st.submit(grid(n=5, priority=9))
    assert (edited.added, edited.edited) == (0, 5)
    assert st.counts() == {"g": {"queued": 5, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}}
    if rig.hosts > 1:  # the other host sees the same table
        assert rig.store(1, create=False).counts()["g"]["queued"] == 5
    twice = grid("d", n=2)
    twice = GridSpec("d", twice.groups, twice.jobs * 2)  # a key twice in one grid goes in once
    assert (st.submit(twice).added, st.counts()["d"]["queued"]) == (2, 2)


def test_a_submit_that_fails_while_its_rows_are_sent_leaves_nothing(rig: Rig) -> None:
    # Rows are made while the database takes them: one that cannot be made, half way, must undo the rest.
    st = rig.store()
    st.submit(grid("kept", n=1))
    jobs = [JobSpec("g", "a", "command", {"i": i}, command=["true"]) for i in range(40)]
    jobs[25] = JobSpec("g", "a", "command", {"i": {25}}, command=["true"])  # a set: not JSON
    with pytest.raises(TypeError):
        st.submit(GridSpec("g", (GroupSpec("a"),), tuple(jobs)))
    assert st.counts() == {"kept": {"queued": 1, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}}
    assert [j["grid"] for j in st.jobs()] == ["kept"]
    assert st.submit(grid(n=3)).added == 3  # and the next submit goes in


def test_params_and_commands_come_back_as_submitted(rig: Rig) -> None:
    st = rig.store()
    awkward = {"text": 'tab\there\nnew line \\N "quoted" \u00e9\u4e2d', "nested": {"list": [1, 2.5, None, True]},
               "dotted.key": "x", "empty": ""}
    jobs = (JobSpec("g", "a", "command", awkward, command=["echo", "\\.", "{text}"], mem_gb=1.5),
            JobSpec("g", "a", "mem.train", {"i": 1}))
    st.submit(GridSpec("g", (GroupSpec("a"),), jobs))
    me = worker(st)
    first, second = st.claim(me, CPU)[1], st.claim(me, CPU)[1]
    assert (first.params, first.command, first.mem_gb) == (awkward, ["echo", "\\.", "{text}"], 1.5)
    assert (second.kind, second.params, second.command) == ("mem.train", {"i": 1}, None)
    assert st.submit(GridSpec("g", (GroupSpec("a"),), jobs)).added == 0


def test_claim_order_priority_then_submission(rig: Rig) -> None:
    st = rig.store()
    jobs = [JobSpec("g", "a", "command", {"i": i}, command=["true"], priority=p)
            for i, p in enumerate([0, 5, 0, 5, -1])]
    st.submit(GridSpec("g", (GroupSpec("a"),), tuple(jobs)))
    ids = {r["params"]["i"]: r["id"] for r in st.jobs()}
    assert drain_all(st, worker(st)) == [ids[1], ids[3], ids[0], ids[2], ids[4]]


def test_claim_many_records_every_outcome_and_claims_a_batch_in_one_transaction(rig: Rig) -> None:
    st = rig.store()
    jobs = [JobSpec("g", "a", "command", {"i": i}, command=["true"], priority=p)
            for i, p in enumerate([0, 5, 0, 5, -1, 0])]
    st.submit(GridSpec("g", (GroupSpec("a"),), tuple(jobs)))
    ids = {r["params"]["i"]: r["id"] for r in st.jobs()}
    me = worker(st)
    accepted, first = st.claim_many(me, CPU, [], 3)
    assert accepted == [] and [c.job_id for c in first] == [ids[1], ids[3], ids[0]]
    assert {c.attempt for c in first} == {1}
    assert len({st.attempts(c.job_id)[0]["started_at"] for c in first}) == 1  # one transaction
    ended = [Outcome(c.job_id, c.attempt, "succeeded") for c in first]
    stale = Outcome(first[0].job_id, 2, "succeeded")  # no such attempt: refused, the rest goes on
    accepted, second = st.claim_many(me, CPU, [*ended, stale], 10)
    assert accepted == [True, True, True, False]
    assert [c.job_id for c in second] == [ids[2], ids[5], ids[4]]  # all that is left, in order
    assert st.claim_many(me, Capacity(gpus=0, slots=0), [], 5) == ([], [])  # nothing fits no capacity
    accepted, none = st.claim_many(me, CPU, [Outcome(c.job_id, c.attempt, "succeeded") for c in second], 0)
    assert (accepted, none) == ([True] * 3, [])
    assert st.counts()["g"] == {"queued": 0, "running": 0, "succeeded": 6, "failed": 0, "cancelled": 0}


def test_dependencies_wait_for_every_job_and_block_on_failure(rig: Rig) -> None:
    st = rig.store()
    st.submit(two_groups())
    me = worker(st)
    _, a = st.claim(me, CPU)
    _, b = st.claim(me, CPU)
    assert {a.group, b.group} == {"first"}
    assert st.claim(me, CPU)[1] is None  # second waits: first's jobs are still running
    st.finish(Outcome(a.job_id, a.attempt, "succeeded"))
    assert st.claim(me, CPU)[1] is None
    st.finish(Outcome(b.job_id, b.attempt, "failed", exit_code=1))  # max_attempts 3: back in the queue
    _, again = st.claim(me, CPU)
    assert again.job_id == b.job_id and again.attempt == 2
    assert st.claim(me, CPU)[1] is None
    st.finish(Outcome(again.job_id, again.attempt, "succeeded"))
    assert drain_all(st, me) and st.counts()["g"]["succeeded"] == 4


def test_failed_dependency_keeps_dependants_queued(rig: Rig) -> None:
    st = rig.store()
    st.submit(two_groups(n_first=1, n_second=1))
    me = worker(st)
    for attempt in (1, 2, 3):
        _, c = st.claim(me, CPU)
        assert (c.group, c.attempt) == ("first", attempt)
        st.finish(Outcome(c.job_id, c.attempt, "failed", exit_code=3))
    assert st.claim(me, CPU)[1] is None
    groups = {g["name"]: g for g in st.groups("g")}
    assert groups["second"]["ready"] is False and groups["first"]["counts"]["failed"] == 1
    # Retrying the failed dependency lets the grid go on.
    assert st.retry(failed=True) == 1
    assert len(drain_all(st, me)) == 2


def test_resources_decide_who_claims(rig: Rig) -> None:
    st = rig.store()
    jobs = [JobSpec("g", "a", "command", {"i": i}, command=["true"], gpus=g) for i, g in enumerate([4, 1, 0])]
    st.submit(GridSpec("g", (GroupSpec("a"),), tuple(jobs)))
    me = worker(st, gpus=[0, 1])
    _, c = st.claim(me, Capacity(gpus=2, slots=0))
    assert c.gpus == 1  # the 4-GPU job does not fit two GPUs
    _, c = st.claim(me, Capacity(gpus=0, slots=1))
    assert c.gpus == 0
    assert st.claim(me, Capacity(gpus=2, slots=1))[1] is None
    _, c = st.claim(me, Capacity(gpus=8, slots=0))
    assert c.gpus == 4


def test_pause_resume_and_grid_filter(rig: Rig) -> None:
    st = rig.store()
    st.submit(grid("one", 1))
    st.submit(grid("two", 1))
    me = worker(st)
    assert st.set_paused("one", True)
    _, c = st.claim(me, CPU)
    assert c.grid == "two"
    assert st.claim(me, CPU)[1] is None
    st.set_paused("one", False)
    assert st.claim(me, Capacity(slots=1, grids=("two",)))[1] is None
    assert st.claim(me, Capacity(slots=1, grids=("one",)))[1].grid == "one"


def test_writes_of_a_superseded_attempt_are_refused(rig: Rig) -> None:
    st = rig.store()
    st.submit(grid(n=1))
    one = worker(st, "one")
    two = worker(st, "two")
    _, c1 = st.claim(one, CPU)
    hb = st.worker_heartbeats()[one.id][0]
    assert st.declare_dead(one.id, hb) == [c1.job_id]
    _, c2 = st.claim(two, CPU)
    assert (c2.job_id, c2.attempt) == (c1.job_id, 2)
    assert not st.update_attempt(c1.job_id, c1.attempt, progress={"epoch": 1})
    assert not st.finish(Outcome(c1.job_id, c1.attempt, "succeeded"))
    assert st.update_attempt(c2.job_id, c2.attempt, progress={"epoch": 1}, metrics={"val": 0.5})
    assert st.finish(Outcome(c2.job_id, c2.attempt, "succeeded", metrics={"best": 1.0}))
    job = st.jobs()[0]
    assert (job["state"], job["attempt"], job["crashes"], job["failures"]) == ("succeeded", 2, 1, 0)
    assert job["metrics"] == {"val": 0.5, "best": 1.0}
    assert [a["outcome"] for a in st.attempts(job["id"])] == ["lost", "succeeded"]
    # The dead worker is told so at its next heartbeat, and claims nothing.
    reply = st.heartbeat(one, [Running(c1.job_id, c1.attempt)])
    assert not reply.alive and reply.fenced == [(c1.job_id, c1.attempt)]
    st.submit(grid(n=2))
    assert st.claim(one, CPU)[1] is None


def test_heartbeat_moves_the_counter_and_reports_cancel_and_drain(rig: Rig) -> None:
    st = rig.store()
    st.submit(grid(n=2))
    me = worker(st)
    _, c = st.claim(me, CPU)
    before = st.worker_heartbeats()[me.id][0]
    reply = st.heartbeat(me, [Running(c.job_id, c.attempt, {"epoch": 3})])
    assert reply.alive and not reply.fenced and not reply.cancel and not reply.drain
    assert st.worker_heartbeats()[me.id][0] == before + 1
    assert st.jobs(ids=[c.job_id])[0]["progress"] == {"epoch": 3}
    assert st.cancel([c.job_id]) == (0, 1)
    assert st.request_drain("w")
    reply = st.heartbeat(me, [Running(c.job_id, c.attempt)])
    assert reply.cancel == [c.job_id] and reply.drain
    # A stale heartbeat count does not kill a worker that has moved on.
    assert st.declare_dead(me.id, before) == []
    # A worker the table gives no job is alive, and told of nothing.
    idle = worker(st, "idle")
    counted = st.worker_heartbeats()[idle.id][0]
    reply = st.heartbeat(idle, [])
    assert reply.alive and not (reply.fenced or reply.cancel or reply.drain)
    assert st.worker_heartbeats()[idle.id][0] == counted + 1


def test_lost_attempts_are_charged_and_fail_at_max_attempts(rig: Rig) -> None:
    st = rig.store()
    st.submit(grid(n=1, max_attempts=2))
    for round_ in (1, 2):
        me = worker(st, f"w{round_}")
        _, c = st.claim(me, CPU)
        assert c.attempt == round_
        st.declare_dead(me.id, st.worker_heartbeats()[me.id][0])
    job = st.jobs()[0]
    assert (job["state"], job["reason"], job["crashes"]) == ("failed", "lost", 2)
    assert st.retry(lost=True, from_scratch=True) == 1
    _, c = st.claim(worker(st, "w3"), CPU)
    assert c.attempt == 3 and c.from_scratch


def test_requeue_without_charge_and_backoff(rig: Rig) -> None:
    st = rig.store()
    st.submit(grid(n=1, max_attempts=1))
    me = worker(st)
    for _ in range(3):  # drained attempts never use up the budget of one
        _, c = st.claim(me, CPU)
        st.finish(Outcome(c.job_id, c.attempt, "requeued", reason="worker drained"))
    st.submit(grid("b", 1, max_attempts=3))
    only_b = Capacity(slots=1, grids=("b",))
    _, c = st.claim(me, only_b)
    backoff = 1.0
    st.finish(Outcome(c.job_id, c.attempt, "failed", exit_code=2, backoff=backoff))
    # claimed again as soon as it is due, never before (claims come every 0.05 s from the failure on)
    again = until("the back-off to end", lambda: st.claim(me, only_b)[1], timeout=backoff + 60, step=0.05)
    failed, retried = st.attempts(c.job_id)
    assert again.job_id == c.job_id and retried["started_at"] >= failed["ended_at"] + backoff


def test_cancel_and_retry(rig: Rig) -> None:
    st = rig.store()
    st.submit(grid(n=3))
    me = worker(st)
    _, c = st.claim(me, CPU)
    queued, running = st.cancel(grid="g")
    assert (queued, running) == (2, 1)
    st.finish(Outcome(c.job_id, c.attempt, "cancelled", reason="cancelled"))
    assert st.counts()["g"]["cancelled"] == 3
    assert st.retry(cancelled=True) == 3
    assert len(drain_all(st, me)) == 3


def test_reregistering_a_worker_requeues_what_its_last_life_held(rig: Rig) -> None:
    st = rig.store()
    st.submit(grid(n=1))
    first = worker(st)
    _, c = st.claim(first, CPU)
    second = worker(st)
    assert second.id == first.id and second.incarnation == first.incarnation + 1
    assert not st.heartbeat(first, []).alive
    _, again = st.claim(second, CPU)
    assert (again.job_id, again.attempt) == (c.job_id, 2)


def test_integrity_and_status_queries(rig: Rig) -> None:
    st = rig.store()
    st.submit(two_groups())
    assert st.integrity() == []
    drain_all(st, worker(st))
    assert st.mean_durations()["g"] >= 0
    assert [g["name"] for g in st.grids()] == ["g"]
    assert len(st.jobs(states=["succeeded"], limit=3, newest_first=True)) == 3


def test_version_file_changes_only_when_claimable_work_may_appear(rig: Rig) -> None:
    st = rig.store()
    st.submit(grid(n=2))
    v0 = st.version()
    me = worker(st)
    v1 = st.version()
    _, c = st.claim(me, CPU)
    st.heartbeat(me, [Running(c.job_id, c.attempt)])
    assert st.version() == v1  # claims and heartbeats wake nobody
    st.finish(Outcome(c.job_id, c.attempt, "failed", exit_code=1))
    assert st.version() != v1  # a requeued job can be claimed again
    assert v0 is not None


def test_every_bump_is_seen_from_another_host_even_within_one_second(multihost_rig: Rig) -> None:
    """The version and busy files as another host reads them: on sshfs a stat alone (inode, mtime,
    size) missed every second bump made within a second (inode numbers reused, whole-second mtimes),
    and an idle worker slept through a submit until its safety poll."""
    writer, reader = multihost_rig.store(0), multihost_rig.store(1)
    seen = (reader.version(), reader.busy_version())
    for _ in range(20):  # (well within a second)
        writer.bump_version()
        writer.announce_busy()
        now = (reader.version(), reader.busy_version())
        assert now[0] != seen[0] and now[1] != seen[1]
        seen = now


@pytest.mark.parametrize("mode", ["local", "shared"])
def test_sqlite_mode_is_recorded_in_the_database(tmp_path, mode: str) -> None:
    from memq.errors import UserError
    from memq.root import RootOptions, open_store

    open_store(RootOptions(root=str(tmp_path), db_mode=mode), create=True).submit(grid())
    assert open_store(RootOptions(root=str(tmp_path)), create=False).backend.mode == mode
    with contextlib.closing(sqlite3.connect(tmp_path / "queue.db")) as conn:  # set when it was created
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 8192
    other = "shared" if mode == "local" else "local"
    with pytest.raises(UserError, match=f"in {mode} mode"):
        open_store(RootOptions(root=str(tmp_path), db_mode=other), create=False)


def test_every_claim_and_finish_records_its_attempt(rig: Rig) -> None:
    # more claims than psycopg's prepare threshold: prepared statements (generic plans on PostgreSQL)
    st = rig.store()
    st.submit(grid(n=12, max_attempts=2))
    me = worker(st)
    done = None
    for i in range(12):
        _, claim = st.claim(me, CPU, done)
        done = Outcome(claim.job_id, claim.attempt, "failed", exit_code=3, reason="exit code 3") if i == 5 else \
            Outcome(claim.job_id, claim.attempt, "succeeded")
    assert st.finish(done)
    drain_all(st, me, CPU)
    assert st.counts()["g"]["succeeded"] == 12
    for job in st.jobs(grid="g"):
        rows = st.attempts(job["id"])
        outcomes = [(r["attempt"], r["outcome"], r["exit_code"], r["worker"]) for r in rows]
        once = [(1, "succeeded", None, "w")]
        assert outcomes == ([(1, "failed", 3, "w"), (2, "succeeded", None, "w")] if job["id"] == 6 else once)
        assert all(r["ended_at"] >= r["started_at"] for r in rows)
    if rig.kind == "postgres":
        import sqlalchemy as sa

        with st.backend.engine.connect() as conn:
            assert conn.execute(sa.text("SHOW plan_cache_mode")).scalar() == "force_generic_plan"


def test_postgres_connection_lost_mid_claim_is_sqlalchemy_s_error_and_the_next_claim_reconnects(tmp_path) -> None:
    import sqlalchemy as sa

    from ..conftest import make_rig

    rig = make_rig("postgres", tmp_path)
    try:
        st = rig.store()
        st.submit(grid(n=3))
        me = worker(st)
        _, first = st.claim(me, CPU)
        killer = sa.create_engine(rig.db)  # the server ends the store's pooled session, as in a restart
        with killer.connect() as conn:
            ended = conn.execute(sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                         "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
        killer.dispose()
        assert ended >= 1
        with pytest.raises(sa.exc.OperationalError):
            st.claim(me, CPU, Outcome(first.job_id, first.attempt, "succeeded"))
        assert st.counts()["g"] == {"queued": 2, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 0}
        accepted, second = st.claim(me, CPU, Outcome(first.job_id, first.attempt, "succeeded"))
        assert accepted and second is not None and second.job_id != first.job_id
    finally:
        for fn in rig.cleanup:
            fn()


def test_a_claim_whose_reply_was_lost_goes_back_to_the_queue_at_the_next_heartbeat(rig: Rig) -> None:
    st = rig.store()
    st.submit(grid(n=2))
    me = worker(st)
    _, kept = st.claim(me, CPU)
    _, lost = st.claim(me, CPU)  # committed, but the worker never learnt of it
    v0 = st.version()
    reply = st.heartbeat(me, [Running(kept.job_id, kept.attempt)])
    assert reply.alive and reply.fenced == []
    jobs = {job["id"]: job for job in st.jobs(grid="g")}
    assert jobs[kept.job_id]["state"] == "running"
    assert (jobs[lost.job_id]["state"], jobs[lost.job_id]["failures"], jobs[lost.job_id]["crashes"]) == ("queued", 0, 0)
    assert st.attempts(lost.job_id)[0]["outcome"] == "requeued" and st.version() != v0  # claimable again
    _, again = st.claim(me, CPU)
    assert (again.job_id, again.attempt) == (lost.job_id, 2)


DROP_V4_COLUMNS = ("ALTER TABLE jobs DROP COLUMN gpu_share", "ALTER TABLE jobs DROP COLUMN gpu_mem_gb",
                   "ALTER TABLE workers DROP COLUMN sharing")  # schema version 4: GPU sharing
DROP_V5_COLUMNS = ("ALTER TABLE grids DROP COLUMN fingerprint", "ALTER TABLE grids DROP COLUMN fingerprint_jobs",
                   "DROP INDEX ix_jobs_group_state", "CREATE INDEX ix_jobs_group_state ON jobs (group_id, state)",
                   )  # schema version 5: submit fingerprints, GPUs and run times in the (group, state) index


def _downgrade_to_version_1(st) -> None:
    """Give a database the shape schema version 1 had (indexes with state, attempts with an id)."""
    import sqlalchemy as sa

    statements = [
        "DROP INDEX ix_jobs_grid", "DROP INDEX ix_jobs_running",
        "CREATE INDEX ix_jobs_grid_state ON jobs (grid_id, state)",
        "CREATE INDEX ix_jobs_worker ON jobs (worker_id, state)",
        "CREATE TABLE attempts_v1 (id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL REFERENCES jobs (id), "
        "attempt INTEGER NOT NULL, worker_id INTEGER REFERENCES workers (id), started_at FLOAT NOT NULL, "
        "ended_at FLOAT, outcome VARCHAR(16), exit_code INTEGER, reason TEXT, "
        "CONSTRAINT uq_attempts_job_attempt UNIQUE (job_id, attempt))",
        "INSERT INTO attempts_v1 (id, job_id, attempt, worker_id, started_at, ended_at, outcome, exit_code, reason) "
        "SELECT row_number() OVER (ORDER BY job_id, attempt), job_id, attempt, worker_id, started_at, ended_at, "
        "outcome, exit_code, reason FROM attempts",
        "DROP TABLE attempts", "ALTER TABLE attempts_v1 RENAME TO attempts", "DROP TABLE group_job_deps",
        *DROP_V4_COLUMNS, *DROP_V5_COLUMNS, "UPDATE meta SET value = '1' WHERE key = 'schema_version'",
    ]
    st.backend.run(lambda conn: [conn.execute(sa.text(sql)) for sql in statements])


def test_a_version_1_database_is_upgraded_when_opened(rig: Rig) -> None:
    import sqlalchemy as sa

    st = rig.store()
    st.submit(grid(n=4))
    me = worker(st)
    _, first = st.claim(me, CPU)
    _, second = st.claim(me, CPU, Outcome(first.job_id, first.attempt, "failed", exit_code=2))
    history = {job["id"]: st.attempts(job["id"]) for job in st.jobs()}
    assert sum(len(rows) for rows in history.values()) == 2
    _downgrade_to_version_1(st)

    upgraded = rig.store(create=False)

    def shape(conn: sa.Connection) -> tuple[str, set[str], set[str], list[str], bool]:
        inspector = sa.inspect(conn)
        version = conn.execute(sa.text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar_one()
        by_state = next(ix for ix in inspector.get_indexes("jobs") if ix["name"] == "ix_jobs_group_state")
        assert by_state["column_names"] == ["group_id", "state", "gpus", "started_at", "finished_at"]
        assert {"fingerprint", "fingerprint_jobs"} <= {c["name"] for c in inspector.get_columns("grids")}
        return (version, {ix["name"] for ix in inspector.get_indexes("jobs")},
                {ix["name"] for ix in inspector.get_indexes("attempts")},
                inspector.get_pk_constraint("attempts")["constrained_columns"], inspector.has_table("group_job_deps"))

    version, job_indexes, attempt_indexes, key, job_deps = upgraded.backend.run(shape, write=False)
    assert version == "5" and key == ["job_id", "attempt"] and not attempt_indexes and job_deps
    assert {"ix_jobs_grid", "ix_jobs_running", "ix_jobs_group_state", "ix_jobs_queued"} <= job_indexes
    assert not job_indexes & {"ix_jobs_grid_state", "ix_jobs_worker"}
    assert {job["id"]: upgraded.attempts(job["id"]) for job in upgraded.jobs()} == history
    assert upgraded.finish(Outcome(second.job_id, second.attempt, "succeeded"))
    drain_all(upgraded, me)
    assert upgraded.counts()["g"]["succeeded"] == 4 and upgraded.integrity() == []
