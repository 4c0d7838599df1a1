"""grids/whole-brain.yaml at demo scale through a real `memq worker`: topyneck runs -> gather -> the
ablation rows full and baseline (tiny models, synthetic data, CPU), and `memq report`'s
ablation table: the README's numbers as published, the measured ones recomputed here."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from jobs.mem.build import build
from jobs.mem.model import read_topyneck
from memq.options import RootOptions
from memq.paths import job_dir, log_file
from memq.root import open_store

from .independent import mean_of, mean_r, split_r

REPO = Path(__file__).resolve().parents[2]
ROWS = ("full", "baseline")
REGULARISERS = [1.0e-4, 3.0e-5]
DEMO = {"TRAINER.MAX_EPOCHS": 2, "TRAINER.LIMIT_TRAIN_BATCHES": 0.1, "TRAINER.LIMIT_VAL_BATCHES": 1.0,
        "TRAINER.EARLY_STOP_PATIENCE": 5}  # fmt: skip
# The README's table (huzeyann/MemoryEncodingModel), typed from it: label -> (r, r^2, public score)
README = {
    "Full Mem (ensemble)": ("0.416", "0.195", "70.85"),
    "Full Mem": ("0.398", "0.180", "66.80"),
    "w/o time": ("0.400", "0.182", "66.09"),
    "w/o answer": ("0.392", "0.176", "64.92"),
    "w/o memC": ("0.394", "0.177", "67.02"),
    "w/o memI": ("0.363", "0.155", "62.65"),
    "w/o memIC": ("0.363", "0.156", "62.24"),
    "Baseline": ("0.332", "0.135", "58.82"),
    "Baseline (ensemble)": ("0.341", "0.141", "61.39"),
}


def demo_grid(tmp: Path, data_dir: str, settings: dict[str, Any]) -> Path:
    """grids/whole-brain.yaml cut to demo size: two regularisers, one run of two rows and the report,
    CPU jobs, tiny models (``settings``), its site paths under ``tmp``. Chain, kinds and the rest of
    the settings are the file's."""
    text = (REPO / "grids" / "whole-brain.yaml").read_text()
    text = text.replace("/data/alg23/whole-brain", str(tmp / "wb")).replace("/data/alg23/fship-b3", data_dir)
    grid = yaml.safe_load(text)
    del grid["anchors"]
    grid["defaults"]["resources"] = {"gpus": 0}
    groups = [g for g in grid["groups"] if g["name"] in ("topyneck", "gather", *ROWS, "report")]
    for group in groups:
        group.pop("resources", None)
        group.pop("repeat", None)
        if group.get("kind", "mem.train") != "eval.report":
            group["params"] = {**group["params"], **settings}
    groups[0]["grid"]["REGULARIZER.LAYER"] = REGULARISERS
    groups[-1]["after"] = list(ROWS)
    grid["groups"] = groups
    path = tmp / "whole-brain.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def memq(root: Path, *args: object, log: Path, scratch: Path) -> subprocess.Popen:
    env = {**os.environ, "MEMQ_SCRATCH": str(scratch)}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "memq", "--root", str(root), *map(str, args)], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, job_params: dict[str, Any]) -> dict[str, Any]:
    """The demo grid submitted and run to the end by one real worker."""
    tmp = tmp_path_factory.mktemp("whole-brain")
    root, log, scratch = tmp / "root", tmp / "log.txt", tmp / "scratch"
    grid_file = demo_grid(tmp, job_params["DATASET.DIR"], {**job_params, **DEMO})
    assert memq(root, "submit", grid_file, log=log, scratch=scratch).wait(timeout=120) == 0, log.read_text()
    worker = memq(root, "worker", "--gpus", "none", "--slots", "1", "--idle-exit", "5", "--poll", "0.2",
                  "--heartbeat", "1", "--retry-backoff", "0", "--name", "w", log=log, scratch=scratch)  # fmt: skip
    try:
        assert worker.wait(timeout=900) == 0, log.read_text()[-4000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    store = open_store(RootOptions(root=str(root)), create=False)
    jobs = {job["id"]: job for job in store.jobs(grid="whole-brain")}
    return {"root": root, "store": store, "jobs": jobs, "log": log, "tmp": tmp}


def _group(chain: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [job for job in chain["jobs"].values() if job["group"] == name]


def _checkpoint_states(chain: dict[str, Any], job_id: int) -> dict[int, dict[str, torch.Tensor]]:
    """Checkpoint id -> its state, each file checked against its registered sha256."""
    states = {}
    for row in chain["store"].checkpoints(job_ids=[job_id], kind="checkpoint"):
        data = Path(row["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        states[row["id"]] = torch.load(row["path"], weights_only=True)
    return states


def _result(chain: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    return json.loads((job_dir(chain["root"], "whole-brain", job["id"], job["attempt"]) / "result.json").read_text())


def test_the_chain_runs_to_the_end_through_a_worker(chain: dict[str, Any]) -> None:
    jobs = chain["jobs"]
    assert len(jobs) == len(REGULARISERS) + 1 + len(ROWS) + 1
    assert {job["state"] for job in jobs.values()} == {"succeeded"}, chain["log"].read_text()[-4000:]
    (gather,) = _group(chain, "gather")
    # the gather ran after every topyneck run, each row after the gather
    finished = {job["id"]: job["finished_at"] for job in jobs.values()}
    started = {job["id"]: job["started_at"] for job in jobs.values()}
    assert all(finished[j["id"]] <= started[gather["id"]] for j in _group(chain, "topyneck"))
    assert all(finished[gather["id"]] <= started[j["id"]] for row in ROWS for j in _group(chain, row))
    (report,) = _group(chain, "report")
    assert all(finished[j["id"]] <= started[report["id"]] for row in ROWS for j in _group(chain, row))
    output = Path(gather["params"]["output"])
    parts = [torch.load(p, weights_only=True) for p in sorted((output.parent / "parts" / "subj01").glob("*.pt"))]
    assert sorted(part["regularizer"] for part in parts) == sorted(REGULARISERS)
    best = max(parts, key=lambda part: part["score"])
    topyneck = read_topyneck(str(output))
    assert topyneck.keys() == best["tensors"].keys()
    assert all(torch.equal(topyneck[k], best["tensors"][k]) for k in topyneck)
    assert {k.split(".")[0] for k in topyneck} == {"retina_mapper", "layer_selector"}


def test_an_ablation_row_trains_without_what_it_removes(chain: dict[str, Any]) -> None:
    """The trained baseline model: its checkpoints hold no memory branch and no passthrough (the full
    model's do) and load strictly into the model its params build, which reads no memory input and
    ignores the behaviour it is given; the topyneck is the gathered one, frozen."""
    (gather,) = _group(chain, "gather")
    topyneck = read_topyneck(gather["params"]["output"])
    removed = {"full": set(), "baseline": {"previous", "memory", "behav_pt_prev", "behav_pt"}}
    for row, gone in removed.items():
        (job,) = _group(chain, row)
        built = build(job["params"], job["repeat"], [], chain["root"])
        states = _checkpoint_states(chain, job["id"])
        assert len(states) == DEMO["TRAINER.MAX_EPOCHS"]
        for state in states.values():
            prefixes = {key.split(".")[0] for key in state}
            assert not prefixes & gone and not prefixes & {"retina_mapper", "layer_selector"}, row
            assert {"previous", "memory", "behav_pt_prev", "behav_pt"} - gone <= prefixes, row
            built.model.load_trainable_state_dict(state)  # strict: no missing, no unexpected key
        frozen = built.model.topyneck_state_dict()
        assert frozen.keys() == topyneck.keys() and all(torch.equal(frozen[k], topyneck[k]) for k in frozen)
        dataset = built.data.datasets("val2")[0]
        samples = [dataset[i] for i in range(4)]
        batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k not in ("subject", "index", "y")}
        assert ("prev_img" in batch) is ("prev_feats" in batch) is ("prev_bhvs" in batch) is (row == "full")
        other = {**batch, **{k: torch.randn_like(batch[k]) for k in ("bhv", "prev_bhvs") if k in batch}}
        with torch.inference_mode():
            model = built.model.eval()
            assert torch.equal(model(batch, "subj01"), model(other, "subj01")) is (row == "baseline")


def _printed_rows(out: str) -> dict[str, list[str]]:
    """The printed table's rows: label -> cells after the label (split on runs of 2+ spaces)."""
    rows = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) > 3 and cells[0] != "row":
            rows[cells[0]] = cells[1:]
    return rows


def test_report_prints_the_papers_rows_next_to_the_measured_ones(chain: dict[str, Any]) -> None:
    out_dir = chain["tmp"] / "report"
    result = subprocess.run([sys.executable, "-m", "memq", "--root", str(chain["root"]), "report", "whole-brain",
                             "--out", str(out_dir)], cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = _printed_rows(result.stdout)
    assert set(README) <= set(rows)
    for label, (r, r2, score) in README.items():
        assert rows[label][5:8] == [r, r2, score], label  # after group, frames, M, B, T
    # measured: each row's soup (members averaged from their checkpoint files) on the whole val2
    # split, per-voxel r in NumPy against the betas in the subject file
    measured = {}
    for row, label in (("full", "Full Mem"), ("baseline", "Baseline")):
        (job,) = _group(chain, row)
        soup = _result(chain, job)["soup"]
        states = _checkpoint_states(chain, job["id"])
        built = build(job["params"], job["repeat"], [], chain["root"])
        r = mean_r(split_r(built, job["params"], mean_of([states[i] for i in soup["members"]]), "val2"))
        assert job["metrics"]["soup_val2"] == pytest.approx(r, abs=1e-5)
        measured[row] = r
        cells = rows[label]
        assert cells[0] == row and float(cells[9]) == pytest.approx(r, abs=5e-5)
        assert cells[11] == "1"  # one run: no sd
    assert float(rows["Baseline"][12]) == pytest.approx(measured["baseline"] - measured["full"], abs=1e-4)
    assert rows["w/o memI"][9:] == ["-", "-", "-", "-"]  # a row of the paper this demo did not train
    assert float(rows["w/o memI"][8]) == pytest.approx(62.65 - 66.80)  # the paper's difference, in points
    page = (out_dir / "index.html").read_text()
    assert "Ablation table" in page and "70.85" in page
    # the grid's own report job printed the same table into its log and wrote its page
    (job,) = _group(chain, "report")
    logged = log_file(chain["root"], "whole-brain", job["id"], job["attempt"]).read_text()
    assert _printed_rows(logged)["Full Mem"] == rows["Full Mem"]
    assert (Path(job["params"]["out"]) / "index.html").is_file()
    assert np.isfinite(list(measured.values())).all()
