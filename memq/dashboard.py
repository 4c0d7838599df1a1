"""`memq status`: one snapshot of the queue as a plain dict (for --json) and as rich renderables.

Ages shown here compare another host's timestamps with this host's clock: they are for display
only; liveness decisions never use them (design.md 5).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from memq.host import runs_here
from memq.jobenv import EXIT_PERMANENT
from memq.store.names import STATES

if TYPE_CHECKING:
    from memq.store.store import Store

LIVE_STATES = ("active", "draining", "quarantined")  # worker states that may still hold jobs
IDLE_LISTED = 20  # plainly idle workers the table lists one by one; more are counted in one line
STATE_STYLES = {"queued": "cyan", "running": "yellow", "succeeded": "green", "failed": "red", "cancelled": "dim"}


def _blocked_reason(group: dict[str, Any], by_name: dict[str, dict[str, Any]]) -> str | None:
    if group["ready"] or not group["counts"]["queued"]:
        return None
    failed, waiting = [], []
    for dep in group["after"]:
        counts = by_name[dep]["counts"]
        bad = counts["failed"] + counts["cancelled"]
        if bad:
            failed.append(f"{dep} has {bad} failed/cancelled")
        elif counts["queued"] + counts["running"]:
            waiting.append(dep)
    for job in group["after_jobs"]:  # an `each:` group: the one job it follows
        if job["state"] in ("failed", "cancelled"):
            failed.append(f"job {job['id']} {job['state']}")
        elif job["state"] != "succeeded":
            waiting.append(f"job {job['id']}")
    if failed:
        return "blocked: " + "; ".join(failed) + " (memq retry --failed)"
    return "waits for " + ", ".join(waiting or group["after"] or [f"job {j['id']}" for j in group["after_jobs"]])


def presumed_dead(worker: dict[str, Any], holds_jobs: bool, now: float) -> str | None:
    """What a live-looking worker row implies, when something speaks against it: its process is
    gone from this host, or it holds jobs and has not heartbeated for over a lease. (Idle workers
    do not heartbeat, so an old heartbeat alone says nothing about them.) Display only: the
    workers' own reaping decides, on their own clocks."""
    if worker["state"] not in LIVE_STATES:
        return None
    if runs_here(worker["host"], worker["boot"], worker["pid"]) is False:
        return f"presumed dead: pid {worker['pid']} is gone from this host"
    age = now - worker["heartbeat_at"] if worker["heartbeat_at"] else None
    if holds_jobs and age is not None and age > worker["lease"]:
        return f"presumed dead: no heartbeat for {_age(age)}, lease {worker['lease']:g}s"
    return None


def _unrunnable(gpu_needs: dict[str, dict[int, int]], workers: list[dict[str, Any]]) -> dict[str, str]:
    """grid -> why some of its queued jobs can run on no worker registered now (too many GPUs)."""
    live = [w for w in workers if w["state"] in LIVE_STATES and not w["presumed_dead"]]
    most = max((len(w["gpus"] or []) for w in live), default=0)
    notes = {}
    for grid, all_needs in gpu_needs.items():
        needs = {gpus: n for gpus, n in all_needs.items() if gpus > most}
        if not needs:
            continue
        jobs = sum(needs.values())
        notes[grid] = (f"{jobs} queued job{'s' if jobs != 1 else ''} need{'s' if jobs == 1 else ''} "
                       f"{max(needs)} GPU{'s' if max(needs) != 1 else ''}; no live worker has more than {most}")
    return notes


def snapshot(store: Store, *, with_groups: bool = True) -> dict[str, Any]:
    """Everything `memq status` shows, as JSON-ready values (one read of the store)."""
    return snapshot_of(store.overview(with_groups=with_groups))


def snapshot_of(view: dict[str, Any]) -> dict[str, Any]:
    """:func:`snapshot` of what memq.store.overview.read returned."""
    now = time.time()
    total = dict.fromkeys(STATES, 0)
    grids = []
    durations = view["durations"]
    for grid in view["grids"]:
        name, per_state = grid["name"], grid["counts"]
        for state, n in per_state.items():
            total[state] += n
        remaining = per_state["queued"] + per_state["running"]
        entry: dict[str, Any] = {"name": name, "paused": bool(grid["paused"]), "counts": per_state,
                                 "total": sum(per_state.values()), "done": remaining == 0}
        if name in durations and remaining:
            entry["eta_s"] = round(remaining * durations[name] / max(per_state["running"], 1), 1)
        if "groups" in grid:
            groups = grid["groups"]
            by_name = {g["name"]: g for g in groups}
            for g in groups:
                g["blocked"] = _blocked_reason(g, by_name)
            entry["groups"] = groups
        grids.append(entry)
    running: dict[int, list[dict[str, Any]]] = {}
    for job in view["running"]:
        running.setdefault(job.pop("worker_id"), []).append(job)
    workers = []
    for w in view["workers"]:
        if w["state"] in ("dead", "stopped") and now - (w["heartbeat_at"] or 0) > 3600:
            continue
        workers.append({
            "name": w["name"], "host": w["host"], "state": w["state"], "reason": w["reason"], "gpus": w["gpus"],
            "slots": w["slots"], "heartbeat": w["heartbeat"], "drain": w["drain"], "lease": w["lease"],
            "heartbeat_age_s": round(now - w["heartbeat_at"], 1) if w["heartbeat_at"] else None,
            "presumed_dead": presumed_dead(w, w["id"] in running, now),
            "running": running.get(w["id"], []),
            # {GPU: [shared jobs, share used]} (memq/worker/sharing.py); only while it may run jobs
            "sharing": w["sharing"] if w["state"] in LIVE_STATES else None,
        })
    for grid_name, note in _unrunnable(view["gpu_needs"], workers).items():
        next(g for g in grids if g["name"] == grid_name)["unrunnable"] = note
    failures = view["failures"]
    for f in failures:
        f["permanent"] = f["exit_code"] == EXIT_PERMANENT
        f["age_s"] = round(now - f["ended_at"], 1) if f["ended_at"] else None
    return {"counts": total, "grids": grids, "workers": workers, "recent_failures": failures}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _grid_end(grid: dict[str, Any]) -> Any:
    """The eta column: time left, or that the grid is done and how it ended."""
    from rich.text import Text

    if not grid["done"]:
        return _age(grid["eta_s"]) if "eta_s" in grid else ""
    c = grid["counts"]
    bad = [f"{c[state]} {state}" for state in ("failed", "cancelled") if c[state]]
    return Text("done: " + ", ".join(bad), style="red") if bad else Text("done", style="green")


def _progress_text(progress: dict[str, Any] | None) -> str:
    if not progress:
        return ""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in progress.items())


def _plainly_idle(worker: dict[str, Any]) -> bool:
    """Active, running nothing, nothing said against it: the row a big pool has hundreds of."""
    return (worker["state"] == "active" and not worker["running"] and not worker["drain"]
            and not worker["presumed_dead"])


def render(snap: dict[str, Any]) -> Any:
    """The dashboard as one rich renderable. Plainly idle workers are listed one per row up to
    IDLE_LISTED, beyond that counted in one line (a table of 1,000 workers took rich 3 s to draw)."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    grids = Table(title="grids", title_justify="left", expand=False)
    for col in ("grid", "ended", *STATES, "eta"):
        grids.add_column(col, justify="right" if col in STATES else "left", no_wrap=col == "eta")
    for g in snap["grids"]:
        c, total = g["counts"], g["total"] or 1
        name = g["name"] + (" [paused]" if g["paused"] else "")
        ended = c["succeeded"] + c["failed"] + c["cancelled"]
        grids.add_row(name, ProgressBar(total=total, completed=ended, width=16),
                      *(Text(str(c[s]), style=STATE_STYLES[s] if c[s] else "dim") for s in STATES),
                      _grid_end(g))
    parts.append(grids)
    for g in snap["grids"]:
        if g.get("unrunnable"):
            parts.append(Text(f"  {g['name']}: {g['unrunnable']} (start a worker with --gpus)", style="red"))
    for g in snap["grids"]:
        waiting = [group for group in g.get("groups", []) if group.get("blocked")]
        failed = [group for group in waiting if group["blocked"].startswith("blocked")]
        shown = failed[:5] + ([group for group in waiting if group not in failed] if len(waiting) <= 5 else [])
        for group in shown:
            style = "red" if group in failed else "dim"
            parts.append(Text(f"  {g['name']}/{group['name']} ({group['counts']['queued']} queued) "
                              f"{group['blocked']}", style=style))
        if len(waiting) > len(shown):
            parts.append(Text(f"  {g['name']}: {len(waiting) - len(shown)} more groups wait for their "
                              "dependencies (memq status --json lists them)", style="dim"))
    idle = [w for w in snap["workers"] if _plainly_idle(w)]
    listed = snap["workers"] if len(idle) <= IDLE_LISTED else [w for w in snap["workers"] if not _plainly_idle(w)]
    if listed:
        workers = Table(title="workers", title_justify="left")
        for col in ("worker", "host", "state", "gpus", "heartbeat", "running"):
            workers.add_column(col)
        for w in listed:
            state = w["state"] + (f": {w['reason']}" if w["reason"] else "") + (" (draining)" if w["drain"] else "")
            if w["presumed_dead"]:
                state += f" - {w['presumed_dead']}"
            jobs = "\n".join(f"{j['id']} ({j['grid']}) {_progress_text(j['progress'])}".rstrip()
                             for j in w["running"]) or "-"
            style = "red" if w["presumed_dead"] else {"quarantined": "red", "dead": "dim", "stopped": "dim"}.get(
                w["state"], "")
            gpus = ",".join(map(str, w["gpus"] or [])) or "-"
            gpus += "".join(f"\nGPU {g}: {n} jobs, {used:g} used" for g, (n, used) in (w["sharing"] or {}).items())
            workers.add_row(w["name"], w["host"], Text(state, style=style), gpus, _age(w["heartbeat_age_s"]), jobs)
        parts.append(workers)
    if len(listed) < len(snap["workers"]):
        hosts = len({w["host"] for w in idle})
        parts.append(Text(f"{len(idle)} idle workers on {hosts} host{'s' if hosts != 1 else ''} "
                          "(memq status --json lists them)", style="dim"))
    if snap["recent_failures"]:
        failures = Table(title="recent failures", title_justify="left")
        for col in ("job", "grid/group", "attempt", "when", "outcome", "exit", "reason"):
            failures.add_column(col)
        for f in snap["recent_failures"]:
            outcome = f["outcome"] + (" (permanent)" if f["permanent"] else "")
            failures.add_row(str(f["job_id"]), f"{f['grid']}/{f['group']}", str(f["attempt"]),
                             f"{_age(f['age_s'])} ago" if f["age_s"] is not None else "-", outcome,
                             "" if f["exit_code"] is None else str(f["exit_code"]), (f["reason"] or "")[:80])
        parts.append(failures)
    if not snap["grids"]:
        parts.append(Text("no grids yet: memq submit GRID.yaml"))
    return Group(*parts)
