"""`memq status` and the unchanged resubmit without Typer or SQLAlchemy (memq.cli.lean): what they
show against values worked out here, the same output as the Store's way, and when a resubmit is
skipped (the submit fingerprint) or not."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from memq.dashboard import snapshot
from memq.spec import GridSpec, GroupSpec, JobSpec
from memq.store.types import Outcome

from ..conftest import Rig
from .test_store import CPU, worker


def lean_imports(rig: Rig) -> set[str]:
    """What `memq status` may import of those _imported reports: where memq.store.direct reads the
    store itself (local SQLite, PostgreSQL), the database's own driver only."""
    return {"postgres": {"psycopg"}, "local": set()}.get(rig.kind, {"sqlalchemy", "typer"})


def _run_cli(rig: Rig, at_exit: str, *args: str, cwd: Path | None = None) -> tuple[str, Any]:
    """stdout of `memq ARGS` run through the real entry point in a fresh interpreter, and what the
    Python expression ``at_exit`` gave as the command ended."""
    code = ("import gc, sys\nfrom memq.cli import main\nsys.argv = ['memq', *sys.argv[1:]]\ntry:\n    main()\n"
            f"finally:\n    print(repr({at_exit}), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code, *rig.cli_args(), *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout, eval(done.stderr.splitlines()[-1])


def _imported(rig: Rig, *args: str, cwd: Path | None = None) -> tuple[str, set[str]]:
    """stdout of `memq ARGS` (:func:`_run_cli`), and which of SQLAlchemy, Typer, psycopg, PyYAML and
    memq.grid it imported."""
    heavy = "('sqlalchemy', 'typer', 'psycopg', 'yaml')"
    out, found = _run_cli(rig, f"sorted({{m for m in sys.modules if m.split('.')[0] in {heavy} or m == 'memq.grid'}})",
                          *args, cwd=cwd)
    return out, {m.split(".")[0] if m != "memq.grid" else m for m in found}


def _queue(rig: Rig):  # type: ignore[no-untyped-def]
    """Two grids: a/first (a success, a final failure, one running), a/then (2 GPUs, after first), b."""
    store = rig.store()
    first = [JobSpec("a", "first", "command", {"i": i}, command=["true"], max_attempts=1) for i in range(3)]
    then = JobSpec("a", "then", "command", {"i": 9}, command=["true"], gpus=2)
    store.submit(GridSpec("a", (GroupSpec("first"), GroupSpec("then", ("first",))), (*first, then)))
    store.submit(GridSpec("b", (GroupSpec("only"),), tuple(
        JobSpec("b", "only", "command", {"i": i}, command=["true"]) for i in range(2))))
    me = worker(store, "w1")
    _, ok = store.claim(me, CPU)
    _, bad = store.claim(me, CPU, Outcome(ok.job_id, ok.attempt, "succeeded"))
    _, running = store.claim(me, CPU, Outcome(bad.job_id, bad.attempt, "failed", exit_code=3, reason="exit code 3"))
    assert store.update_attempt(running.job_id, running.attempt, progress={"epoch": 2, "loss": 0.5})
    return store, ok, bad, running


def _without_ages(snap: dict) -> dict:
    for w in snap["workers"]:
        w.pop("heartbeat_age_s")
    for f in snap["recent_failures"]:
        f.pop("age_s")
    return snap


def test_status_without_sqlalchemy_shows_what_the_store_holds(rig: Rig, cli) -> None:
    store, _ok, bad, running = _queue(rig)
    result = cli(*rig.cli_args(), "status", "--json")
    assert result.code == 0, result.err
    shown = json.loads(result.out)

    assert shown["counts"] == {"queued": 3, "running": 1, "succeeded": 1, "failed": 1, "cancelled": 0}
    a, b = shown["grids"]
    assert (a["name"], a["counts"], a["total"], a["done"]) == (
        "a", {"queued": 1, "running": 1, "succeeded": 1, "failed": 1, "cancelled": 0}, 4, False)
    assert (b["name"], b["counts"]["queued"], b["total"], "eta_s" in b) == ("b", 2, 2, False)
    ended = [j for j in store.jobs(grid="a") if j["state"] == "succeeded"]
    mean = statistics.fmean(j["finished_at"] - j["started_at"] for j in ended)
    assert a["eta_s"] == round(2 * mean / 1, 1)  # 1 queued + 1 running, 1 running
    assert [(g["name"], g["blocked"]) for g in a["groups"]] == [
        ("first", None), ("then", "blocked: first has 1 failed/cancelled (memq retry --failed)")]
    # JSON's true and false, not SQLite's 1 and 0
    assert [g["ready"] for g in a["groups"]] == [True, False] and all(type(g["ready"]) is bool for g in a["groups"])
    assert a["paused"] is False
    assert a["unrunnable"] == "1 queued job needs 2 GPUs; no live worker has more than 0"
    (w,) = shown["workers"]
    assert (w["name"], w["state"], w["gpus"], w["presumed_dead"]) == ("w1", "active", [], None)
    assert w["drain"] is False
    assert w["running"] == [{"id": running.job_id, "grid": "a", "attempt": 1, "progress": {"epoch": 2, "loss": 0.5}}]
    (f,) = shown["recent_failures"]
    assert (f["job_id"], f["attempt"], f["outcome"], f["exit_code"], f["grid"], f["group"], f["permanent"]) == (
        bad.job_id, 1, "failed", 3, "a", "first", False)

    # the Store's way (SQLAlchemy's connection, memq.dashboard.snapshot) shows the same
    assert _without_ages(shown) == _without_ages(json.loads(json.dumps(snapshot(store))))
    # and so does the table the Typer app draws (--interval: an option only it takes)
    lean_table, typer_table = cli(*rig.cli_args(), "status"), cli(*rig.cli_args(), "status", "--interval", "5")
    assert lean_table.code == typer_table.code == 0
    assert "blocked: first has 1 failed/cancelled" in lean_table.out and "epoch=2 loss=0.5" in lean_table.out
    ages = re.compile(r"\b\d+(s|m|\.\dh)\b")
    assert ages.sub("AGE", lean_table.out) == ages.sub("AGE", typer_table.out)

    out, imported = _imported(rig, "status", "--json")
    assert json.loads(out)["counts"] == shown["counts"]
    assert imported == lean_imports(rig)


def test_the_collector_is_off_only_while_this_path_answers(rig: Rig) -> None:
    """A command answered here runs without the cyclic collector and freezes what is left (no last
    pass at exit); one left to the Typer app, long-running `memq worker` among them, keeps it."""
    _queue(rig)
    answered_here = lean_imports(rig) != {"sqlalchemy", "typer"}
    for args, collector in ((["status", "--json"], not answered_here), (["status", "--interval", "5"], True)):
        _, found = _run_cli(rig, "(gc.isenabled(), gc.get_freeze_count() > 0)", *args)
        assert found == (collector, not collector), args


GRID = """\
name: fp
defaults:
  kind: command
  command: ["true", "{i}"]
  resources: {gpus: 0}
groups:
  - name: all
    grid: {i: [1, 2, 3, 4]}
"""


def test_an_unchanged_resubmit_is_not_expanded_and_writes_nothing(rig: Rig, cli, tmp_path: Path) -> None:
    path = tmp_path / "fp.yaml"
    path.write_text(GRID)
    base = rig.cli_args()

    def submit(*extra: object) -> str:
        result = cli(*base, "submit", path, *extra)
        assert result.code == 0 and result.err == "", result
        return result.out

    unchanged = "fp: unchanged since the last submit, nothing to do (0 jobs added;"
    assert submit().startswith("fp: 4 jobs added, 0 already queued")
    store = rig.store()
    before = (store.version(), store.jobs())
    assert submit().startswith(unchanged)
    out, imported = _imported(rig, "submit", str(path))
    assert out.startswith(unchanged) and imported == lean_imports(rig)
    assert json.loads(cli(*base, "submit", "--json", path).out) == {
        "grid": "fp", "added": 0, "existing": None, "edited": 0, "unchanged": True}
    assert (store.version(), store.jobs()) == before  # nothing written: every write moves the version

    assert submit("--force") == "fp: 0 jobs added, 4 already queued\n"
    path.write_text(GRID + "# a comment changes the bytes, not the jobs\n")
    assert submit() == "fp: 0 jobs added, 4 already queued\n"
    assert submit().startswith(unchanged)
    assert submit("--set", "x=1") == "fp: 4 jobs added, 0 already queued\n"
    assert submit("--set", "x=1").startswith(unchanged)
    assert submit("--set", "x=2").startswith("fp: 4 jobs added")

    # a job row gone (by hand: memq never deletes one) makes the grid's count differ: expanded again
    gone = max(j["id"] for j in store.jobs(grid="fp"))
    store.backend.run(lambda conn: conn.exec_driver_sql(f"DELETE FROM jobs WHERE id = {gone}"))
    assert submit("--set", "x=2") == "fp: 1 job added, 3 already queued\n"
    assert submit("--set", "x=2").startswith(unchanged)

    # a file that changed is validated again: bad input is one line, exit 2, nothing written
    path.write_text(GRID.replace("gpus: 0", "gpus: lots"))
    before = (store.version(), store.jobs())
    bad = cli(*base, "submit", path)
    assert bad.code == 2 and bad.out == "" and bad.err.startswith(f"error: {path}:5:")
    assert (store.version(), store.jobs()) == before


def test_text_and_empty_values_come_back_as_written(rig: Rig, cli) -> None:
    """Text with tabs, newlines, backslashes and \\N, '' and NULL are shown as they were written, by
    the lean path (memq.store.direct) as by the Store's."""
    store = rig.store()
    store.submit(GridSpec("t", (GroupSpec("g"),), (JobSpec("t", "g", "command", {}, command=["true"]),)))
    odd = "exit 1:\ttab, \\N, back\\slash\nnew line é ✓"
    for name, reason in (("w-odd", odd), ("w-empty", ""), ("w-none", None)):
        store.set_worker_state(worker(store, name).id, "quarantined", reason)
    store.set_sharing(worker(store, "w-shares", gpus=[0]).id, {"0": [2, 0.5]})
    shown = json.loads(cli(*rig.cli_args(), "status", "--json").out)
    assert [(w["name"], w["reason"]) for w in shown["workers"]] == [
        ("w-odd", odd), ("w-empty", ""), ("w-none", None), ("w-shares", None)]
    assert shown["workers"][3]["sharing"] == {"0": [2, 0.5]} and shown["workers"][3]["gpus"] == [0]
    assert _without_ages(shown) == _without_ages(json.loads(json.dumps(snapshot(store))))
