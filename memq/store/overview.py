"""What `memq status` reads, as plain SQL on a driver's cursor (sqlite3 or psycopg), without SQLAlchemy.

One source for both ways of reading it: the Store (memq.store.reads, on its connection's driver
cursor, inside its transaction) and `memq status` without SQLAlchemy (memq.cli.lean, on a
connection of its own). The SQL is what both databases accept alike, and has no parameters. Values
come back as the schema means them: booleans as bool (sqlite3 gives 0 and 1), JSON columns parsed
(read as text from both drivers: CAST(... AS TEXT)).
"""

from __future__ import annotations

import json
from typing import Any

from memq.store.names import STATES

GRIDS = "SELECT id, name, paused FROM grids ORDER BY id"
GROUPS = "SELECT id, grid_id, name, ready FROM groups ORDER BY id"
# (group, state, jobs, summed and counted run times of their last attempts) in one pass over the
# (group, state) index, which covers the times (ix_jobs_group_state; the run times read apart were
# a second pass, 11 ms of PostgreSQL's 20 at 100,000 jobs); the succeeded rows give the durations.
COUNTS_BY_GROUP = ("SELECT group_id, state, count(*), sum(finished_at - started_at), count(finished_at - started_at) "
                   "FROM jobs GROUP BY group_id, state")
DEPENDENCIES = "SELECT group_id, after_group_id FROM group_deps"
JOB_DEPENDENCIES = "SELECT d.group_id, j.id, j.state FROM group_job_deps d JOIN jobs j ON j.id = d.after_job_id"
# The queued jobs that need GPUs: from the (group, state) index, which covers GPUs (a scan of the jobs
# took twice as long at 100,000 jobs, and PostgreSQL's read of the queued jobs' rows 50 ms).
# From the running jobs' index: its condition (worker_id IS NOT NULL) is spelled out for the planners,
# and +id keeps SQLite from scanning every job in id order instead (18 ms at 100,000 jobs).
RUNNING = ("SELECT id, grid_id, attempt, CAST(progress AS TEXT), worker_id FROM jobs WHERE worker_id IS NOT NULL "
           "AND state = 'running' ORDER BY +id")
QUEUED_GPU_JOBS = ("SELECT group_id, gpus, count(*) FROM jobs WHERE group_id IN (SELECT id FROM groups) "
                   "AND state = 'queued' AND gpus > 0 GROUP BY group_id, gpus")
WORKER_COLUMNS = ("id", "name", "host", "pid", "boot", "incarnation", "state", "reason", "gpus", "slots",
                  "heartbeat", "heartbeat_at", "lease", "drain", "started_at", "sharing")
WORKERS = ("SELECT id, name, host, pid, boot, incarnation, state, reason, CAST(gpus AS TEXT), slots, heartbeat, "
           "heartbeat_at, lease, drain, started_at, CAST(sharing AS TEXT) FROM workers ORDER BY id")
FAILURE_COLUMNS = ("job_id", "attempt", "outcome", "exit_code", "reason", "ended_at", "grid", "group")
RECENT_FAILURES = (
    "SELECT a.job_id, a.attempt, a.outcome, a.exit_code, a.reason, a.ended_at, gr.name, g.name "
    "FROM attempts a JOIN jobs j ON j.id = a.job_id JOIN groups g ON g.id = j.group_id "
    "JOIN grids gr ON gr.id = g.grid_id WHERE a.outcome IN ('failed', 'lost') "
    "ORDER BY a.ended_at DESC, a.job_id DESC LIMIT 5")


def parsed(text: str | None) -> Any:
    """A JSON column's value (read as text) as Python."""
    return None if text is None else json.loads(text)


def _all(cursor: Any, sql: str) -> list[Any]:
    cursor.execute(sql)
    return cursor.fetchall()


def durations(by_group: list[Any], grid_of: dict[int, str]) -> dict[str, float]:
    """grid name (``grid_of``: by group id) -> mean run time of its succeeded jobs' last attempts,
    from the rows of COUNTS_BY_GROUP."""
    sums: dict[str, list[float]] = {}
    for group_id, state, _jobs, seconds, n in by_group:
        if state == "succeeded" and n:
            total = sums.setdefault(grid_of[group_id], [0.0, 0])
            total[0] += seconds
            total[1] += n
    return {grid: seconds / n for grid, (seconds, n) in sums.items()}


def mean_durations(cursor: Any) -> dict[str, float]:
    """grid name -> mean run time of its succeeded jobs' last attempts (:func:`durations`)."""
    by_group = counts_by_group(cursor)
    return durations(by_group, _grid_names_by_group(grids(cursor, with_groups=False, by_group=by_group)))


def _grid_names_by_group(found: dict[int, dict[str, Any]]) -> dict[int, str]:
    """group id -> its grid's name, from :func:`grids`."""
    return {gid: g["name"] for g in found.values() for gid in g["group_ids"]}


def workers(cursor: Any) -> list[dict[str, Any]]:
    """Every worker's row, in registration order."""
    rows = [dict(zip(WORKER_COLUMNS, row, strict=True)) for row in _all(cursor, WORKERS)]
    for w in rows:
        w["gpus"], w["sharing"], w["drain"] = parsed(w["gpus"]), parsed(w["sharing"]), bool(w["drain"])
    return rows


def _groups(cursor: Any, rows: list[Any], by_group: list[Any]) -> dict[int, dict[str, Any]]:
    """Group id -> its name, readiness, the groups and single jobs it is after, its counts by state."""
    names = {gid: name for gid, _grid, name, _ready in rows}
    out = {gid: {"name": name, "ready": bool(ready), "after": [], "after_jobs": [],
                 "counts": dict.fromkeys(STATES, 0)} for gid, _grid, name, ready in rows}
    for gid, after in _all(cursor, DEPENDENCIES):
        out[gid]["after"].append(names[after])
    for gid, job_id, state in _all(cursor, JOB_DEPENDENCIES):
        out[gid]["after_jobs"].append({"id": job_id, "state": state})
    for gid, state, n, _seconds, _timed in by_group:
        out[gid]["counts"][state] = n
    return out


def counts_by_group(cursor: Any) -> list[Any]:
    """The rows of COUNTS_BY_GROUP: what :func:`grids` and :func:`durations` are made from."""
    return _all(cursor, COUNTS_BY_GROUP)


def grids(cursor: Any, *, with_groups: bool = True, by_group: list[Any] | None = None) -> dict[int, dict[str, Any]]:
    """Grid id -> its id, name, paused, counts by state, the ids of its groups (``group_ids``), and
    with ``with_groups`` its groups (name, readiness, the groups and single jobs each is after,
    counts by state). ``by_group``: :func:`counts_by_group`, read here if not given."""
    by_group = counts_by_group(cursor) if by_group is None else by_group
    out = {gid: {"id": gid, "name": name, "paused": bool(paused), "counts": dict.fromkeys(STATES, 0),
                 "group_ids": []} for gid, name, paused in _all(cursor, GRIDS)}
    groups = _all(cursor, GROUPS)
    for gid, grid, _name, _ready in groups:
        out[grid]["group_ids"].append(gid)
    grid_of = {gid: grid for gid, grid, _name, _ready in groups}
    for group_id, state, n, _seconds, _timed in by_group:
        out[grid_of[group_id]]["counts"][state] += n
    if with_groups:
        views = _groups(cursor, groups, by_group)
        for grid in out.values():
            grid["groups"] = []
        for gid, grid_id, _name, _ready in groups:
            out[grid_id]["groups"].append(views[gid])
    return out


def read(cursor: Any, *, with_groups: bool = True) -> dict[str, Any]:
    """What `memq status` shows, one query per kind of thing (run them in one transaction):
    ``grids`` (as :func:`grids` gives them), ``durations`` (grid -> mean run time), ``running``
    (running jobs, by id), ``workers`` (rows), ``failures`` (the 5 latest failed or lost attempts)
    and ``gpu_needs`` (grid -> GPUs needed -> queued jobs that need them)."""
    by_group = counts_by_group(cursor)
    found = grids(cursor, with_groups=with_groups, by_group=by_group)
    name = {i: g["name"] for i, g in found.items()}
    grid_of = _grid_names_by_group(found)
    for grid in found.values():
        del grid["group_ids"]
    gpu_needs: dict[str, dict[int, int]] = {}
    for group_id, need, n in _all(cursor, QUEUED_GPU_JOBS):
        per_gpus = gpu_needs.setdefault(grid_of[group_id], {})
        per_gpus[need] = per_gpus.get(need, 0) + n
    return {
        "grids": list(found.values()),
        "durations": durations(by_group, grid_of),
        "running": [{"id": i, "grid": name[grid_id], "attempt": attempt, "progress": parsed(progress),
                     "worker_id": worker} for i, grid_id, attempt, progress, worker in _all(cursor, RUNNING)],
        "workers": workers(cursor),
        "failures": [dict(zip(FAILURE_COLUMNS, row, strict=True)) for row in _all(cursor, RECENT_FAILURES)],
        "gpu_needs": gpu_needs,
    }
