"""`memq soup` / `memq ensemble`: the derived grid, its checks, idempotence and waiting."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from jobs.mem.build import build, job_config
from memq.coordinator import Section, plan, resolve_recipe
from memq.follow import JobsFailed, wait
from memq.grid import load_grid, load_grid_file
from memq.store.types import Capacity, Outcome

from ..mem.independent import mean_of, mean_r, split_r
from .rig import GRID, Rig, grid_text

DERIVED = GRID + "-ensemble"


def groups(rig: Rig) -> dict[str, list[str]]:
    return {g["name"]: sorted(g["after"]) for g in rig.store.groups(DERIVED)}


def derived(rig: Rig, group: str | None = None) -> list[dict[str, Any]]:
    return rig.store.jobs(grid=DERIVED, group=group)


def test_ensemble_derives_soup_predict_and_combine_groups_once(rig: Rig, grid_file: Path, tmp_path: Path,
                                                               cli) -> None:
    ids = rig.train(grid_file, n_checkpoints=0)
    result = cli(*rig.options(), "ensemble", grid_file, "--out", tmp_path / "out", "--no-wait")
    assert result.code == 0, result
    assert "tgrid-ensemble: 13 jobs, 13 added" in result.out
    expected = {f"soup-greedy-{i}": [] for i in ids}
    expected |= {f"predict-greedy-{i}": [f"soup-greedy-{i}"] for i in ids}
    expected["combine-greedy"] = sorted(f"predict-greedy-{i}" for i in ids)
    assert groups(rig) == expected
    soup = derived(rig, f"soup-greedy-{ids[0]}")[0]
    assert (soup["kind"], soup["params"], soup["gpus"]) == ("mem.soup", {"source_job": ids[0], "recipe": "greedy"}, 0)
    predicts = derived(rig, f"predict-greedy-{ids[0]}")
    assert [p["params"]["split"] for p in predicts] == ["predict", "val2"]
    assert predicts[0]["params"] == {"source_job": ids[0], "recipe": "greedy", "split": "predict"}
    combine = derived(rig, "combine-greedy")[0]
    assert combine["gpus"] == 0  # the kind's default
    assert combine["params"] == {"grid": GRID, "out": str(tmp_path / "out"), "recipe": "greedy", "jobs": ids}
    again = cli(*rig.options(), "ensemble", GRID, "--out", tmp_path / "out", "--no-wait")  # by grid name
    assert again.code == 0 and "13 jobs, 0 added" in again.out


def test_soup_alone_then_the_ensemble_reuses_the_soups(rig: Rig, grid_file: Path, tmp_path: Path, cli) -> None:
    ids = rig.train(grid_file, n_checkpoints=0)
    result = cli(*rig.options(), "soup", grid_file, "--recipe", "uniform", "--no-wait")
    assert result.code == 0 and "4 jobs, 4 added" in result.out
    assert sorted(groups(rig)) == sorted(f"soup-uniform-{i}" for i in ids)
    result = cli(*rig.options(), "ensemble", grid_file, "--recipe", "uniform", "--out", tmp_path / "o", "--no-wait")
    assert "13 jobs, 9 added" in result.out
    # the other recipe (the section's) is a plan of its own: its jobs wait for nothing of this one
    assert cli(*rig.options(), "soup", grid_file, "--no-wait").code == 0
    assert groups(rig)[f"predict-uniform-{ids[0]}"] == [f"soup-uniform-{ids[0]}"]
    assert groups(rig)["combine-uniform"] == sorted(f"predict-uniform-{i}" for i in ids)
    assert len(derived(rig, f"soup-greedy-{ids[0]}")) == 1


def test_unfinished_training_is_an_error_unless_partial(rig: Rig, grid_file: Path, tmp_path: Path, cli) -> None:
    from memq.grid import load_grid

    rig.store.submit(load_grid(grid_file))
    ctx = rig.claim()
    rig.finish(ctx)  # job 1 succeeded, 2..4 queued
    result = cli(*rig.options(), "ensemble", grid_file, "--out", tmp_path / "out", "--no-wait")
    assert result.code == 2 and result.err.count("\n") == 1
    assert "3 of 4 jobs of grid 'tgrid' have not succeeded: #2 all queued, #3 A queued, #4 A queued" in result.err
    assert "--partial" in result.err and derived(rig) == []
    result = cli(*rig.options(), "ensemble", grid_file, "--out", tmp_path / "out", "--no-wait", "--partial")
    assert result.code == 0 and "4 jobs, 4 added" in result.out  # soup, predict x2, combine of job 1
    old = derived(rig, "combine-greedy")[0]
    assert old["params"]["jobs"] == [1] and old["params"]["partial"] is True
    for _ in range(3):
        rig.finish(rig.claim())  # jobs 2..4 succeed (the derived ones have higher ids)
    # the full plan writes to the same directory: the partial plan's unfinished combine job is cancelled
    result = cli(*rig.options(), "ensemble", grid_file, "--out", tmp_path / "out", "--no-wait")
    assert result.code == 0 and f"cancelled combine jobs {old['id']}" in result.out
    combines = {row["id"]: row for row in derived(rig, "combine-greedy")}
    assert combines[old["id"]]["state"] == "cancelled"
    (new,) = [row for row in combines.values() if row["id"] != old["id"]]
    assert new["state"] == "queued" and new["params"]["jobs"] == [1, 2, 3, 4] and "partial" not in new["params"]


def test_a_grid_without_an_ensemble_section_or_with_bad_stage_params(rig: Rig, tmp_path: Path,
                                                                     params: dict[str, Any], cli) -> None:
    bare = tmp_path / "bare.yaml"
    bare.write_text(grid_text(params, ensemble=False))
    rig.train(bare, n_checkpoints=0)
    result = cli(*rig.options(), "ensemble", bare, "--out", tmp_path / "out")
    assert result.code == 2 and "has no `ensemble:` section" in result.err
    bad = tmp_path / "bad.yaml"
    bad.write_text(grid_text(params, schemes="A"))
    result = cli(*rig.options(), "ensemble", bad, "--out", tmp_path / "out")
    assert result.code == 2 and f"{bad}:" in result.err and "schemes" in result.err
    result = cli(*rig.options(), "soup", bare.with_name("nope.yaml"))
    assert result.code == 2 and "no such grid file" in result.err
    result = cli(*rig.options(), "soup", bad, "--recipe", "best")
    assert result.code == 2 and "unknown soup recipe 'best'" in result.err


def test_waiting_ends_when_all_succeed_and_fails_on_a_failed_job(rig: Rig, grid_file: Path, tmp_path: Path,
                                                                 cli) -> None:
    rig.train(grid_file, n_checkpoints=0)
    assert cli(*rig.options(), "soup", grid_file, "--no-wait").code == 0
    stages = {row["key"]: "soup" for row in derived(rig)}
    seen: list[dict[str, dict[str, int]]] = []
    first = rig.claim()
    rig.finish(first)
    _, second = rig.store.claim(rig.worker, Capacity(slots=1))
    rig.store.finish(Outcome(second.job_id, second.attempt, "failed_final", exit_code=1, reason="exit code 1"))
    with pytest.raises(JobsFailed) as failed:
        wait(rig.store, DERIVED, stages, seen.append, interval=0.01)
    assert [row["id"] for row in failed.value.rows] == [second.job_id]
    assert seen[-1]["soup"]["succeeded"] == 1 and seen[-1]["soup"]["failed"] == 1
    # a rerun requeues what failed; once every job succeeded the wait returns their rows
    result = cli(*rig.options(), "soup", grid_file, "--no-wait")
    assert "requeued 1 job that had failed" in result.out
    while (ctx := rig.claim()) is not None:
        rig.finish(ctx)
    rows = wait(rig.store, DERIVED, stages, seen.append, interval=0.01)
    assert len(rows) == 4 and seen[-1] == {"soup": {"queued": 0, "running": 0, "succeeded": 4, "failed": 0,
                                                    "cancelled": 0}}


def test_a_failed_derived_job_ends_the_command_with_exit_1(rig: Rig, tmp_path: Path, params: dict[str, Any],
                                                          cli) -> None:
    """A real worker runs the soups of jobs that left no checkpoint; each soup fails for good on its
    first attempt, and the waiting command (the real wait, polling the store) says which and why."""
    grid = yaml.safe_load(grid_text(params))
    grid["ensemble"]["soup"]["max_attempts"] = 1
    path = tmp_path / "tgrid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    ids = rig.train(path, n_checkpoints=0)
    log = tmp_path / "worker.log"
    worker = rig.memq("worker", "--gpus", "none", "--slots", "2", "--name", "w", "--poll", "0.2",
                      "--retry-backoff", "0", "--grace", "1", log=log)
    command = rig.memq("ensemble", path, "--out", tmp_path / "out", "--poll", "0.2", log=tmp_path / "command.log")
    try:
        code = command.wait(timeout=180)  # a wait that missed the failure would never return
    finally:
        command.kill()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log.read_text()[-3000:]
    said_lines = (tmp_path / "command.log").read_text()
    assert code == 1, (said_lines, log.read_text()[-3000:])
    lines = [line for line in said_lines.splitlines() if line.startswith("error:")]  # after the progress view
    assert lines, said_lines
    for line in lines:
        said = re.fullmatch(r"error: job (\d+) \(soup-greedy-(\d+), mem\.soup\) failed: exit code 1 "
                            r"\(see `memq logs (\d+)`\)", line)
        assert said and said[1] == said[3], line
        (row,) = rig.store.jobs(ids=[int(said[1])])
        assert (row["group"], row["state"], row["attempt"]) == (f"soup-greedy-{said[2]}", "failed", 1)
        source = row["params"]["source_job"]
        assert source == int(said[2]) and source in ids
        assert f"job {source} has no registered checkpoints" in cli(*rig.options(), "logs", row["id"]).out
    later = [row for row in derived(rig) if not row["group"].startswith("soup-")]
    assert {row["state"] for row in later} == {"queued"}  # nothing after a failed soup ran


def test_soup_waits_and_says_where_each_soup_is(rig: Rig, grid_file: Path, cli) -> None:
    ids = rig.train(grid_file)
    assert cli(*rig.options(), "soup", grid_file, "--recipe", "uniform", "--no-wait").code == 0
    assert rig.drain() == len(ids)
    result = cli(*rig.options(), "soup", grid_file, "--recipe", "uniform")
    assert result.code == 0, result.err
    lines = result.out.splitlines()  # (after what the in-process soup jobs printed)
    lines = lines[lines.index(f"{DERIVED}: 4 jobs, 0 added"):]
    assert lines[-1] == "4 uniform soups ready"
    for job, line in zip(rig.store.jobs(ids=ids), lines[1:-1], strict=True):
        path = rig.root / "soups" / GRID / str(job["id"]) / "uniform.pt"
        said = re.fullmatch(rf"job {job['id']}: {re.escape(str(path))}  val2 r (-?\d\.\d{{4}})", line)
        assert said and path.is_file(), line
        # the uniform soup's val2 r, recomputed here from the checkpoint files and the betas
        states = [torch.load(row["path"], weights_only=True) for row in rig.store.checkpoints(job_ids=[job["id"]])]
        built = build(job["params"], job["repeat"], [], rig.root)
        val2 = mean_r(split_r(built, job["params"], mean_of(states), "val2"))
        assert float(said[1]) == pytest.approx(val2, abs=6e-5), (line, val2)


def test_xvbc_ensemble_is_the_reference_uniform_soup_of_each_runs_top_10(tmp_path: Path) -> None:
    path = Path(__file__).parents[2] / "grids" / "xvbc.yaml"
    parsed, source = load_grid_file(path)
    assert parsed.ensemble is not None
    section = Section(parsed, source, parsed.ensemble)
    recipe = resolve_recipe(section, None)
    assert recipe == "uniform"
    assert resolve_recipe(section, "greedy") == "greedy"  # still an option
    trained = load_grid(path).jobs
    assert {job_config(job.params).TRAINER.SAVE_TOP_K for job in trained} == {10}
    planned = plan(section, [{"id": i} for i in range(1, len(trained) + 1)], recipe=recipe, out=tmp_path)
    soups = [job for job in planned.spec.jobs if planned.stages[job.key] == "soup"]
    assert len(soups) == 111 and {job.params["recipe"] for job in soups} == {"uniform"}
