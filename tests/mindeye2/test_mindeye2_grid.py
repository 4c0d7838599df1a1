"""grids/mindeye2.yaml through a real `memq worker` (16 stand-in GPUs) on a stand-in checkout whose
jupyter, accelerate and python record how they were called (checkout.py): the published models
with the README's arguments, conversion before use, the DeepSpeed configuration, accel.slurm's
environment, a port per job, and inference and evaluation after each fine-tune."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from itertools import combinations, pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.mindeye2.params import parse
from jobs.mindeye2.run import check_inputs
from memq.errors import PermanentError
from memq.options import RootOptions
from memq.root import open_store

from ..conftest import Processes
from .checkout import make_checkout, records

REPO = Path(__file__).parents[2]
SUBJECTS = (1, 2, 5, 7)
PATHS = "--data_path={src} --cache_dir={src}"
# the README's commands ("Where are the pretrained models? What are their configs?"), # = the subject
PRETRAIN = ("--model_name=final_multisubject_subj0# --multi_subject --subj=# --batch_size=42 --max_lr=3e-4 "
            "--mixup_pct=.33 --num_epochs=150 --use_prior --prior_scale=30 --clip_scale=1 --blurry_recon "
            "--blur_scale=.5 --no-use_image_aug --n_blocks=4 --hidden_dim=4096 --num_sessions=40")
FINETUNE = ("--model_name=final_subj0#_pretrained_{n}sess_24bs --no-multi_subject --subj=# --batch_size=24 "
            "--max_lr=3e-4 --mixup_pct=.33 --num_epochs=150 --use_prior --prior_scale=30 --clip_scale=1 "
            "--blurry_recon --blur_scale=.5 --no-use_image_aug --n_blocks=4 --hidden_dim=4096 --num_sessions={n} "
            "--multisubject_ckpt=../train_logs/final_multisubject_subj0#")
LIGHT = ("--model_name=multisubject_subj01_1024hid_nolow_300ep --multi_subject --subj=1 --batch_size=42 "
         "--max_lr=3e-4 --mixup_pct=.33 --num_epochs=300 --use_prior --prior_scale=30 --clip_scale=1 "
         "--no-blurry_recon --blur_scale=.5 --no-use_image_aug --n_blocks=4 --hidden_dim=1024 --num_sessions=40")


def published(src: Path) -> dict[str, set[str]]:
    """Model name -> the README's arguments for it, plus the data and cache paths."""
    commands = [LIGHT, *(PRETRAIN.replace("#", str(s)) for s in SUBJECTS),
                *(FINETUNE.format(n=n).replace("#", str(s)) for s in SUBJECTS for n in (40, 1))]
    out = {}
    for command in commands:
        args = {*command.split(), *PATHS.format(src=src).split()}
        out[next(a.split("=")[1] for a in args if a.startswith("--model_name="))] = args
    return out


def option(argv: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}="))


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The grid submitted and run to the end; what the stand-ins recorded and the store's rows."""
    tmp = tmp_path_factory.mktemp("mindeye2")
    src = make_checkout(tmp / "MindEyeV2")
    root = tmp / "root"
    memq = [sys.executable, "-m", "memq", "--root", str(root)]
    env = {**os.environ, "RECORD": str(tmp / "record.jsonl"), "MEMQ_SCRATCH": str(tmp / "scratch")}
    submitted = subprocess.run([*memq, "submit", str(REPO / "grids/mindeye2.yaml"), "--set",
                                f"repo={tmp / 'MindEyeV2'}"], capture_output=True, text=True, env=env, cwd=REPO)
    assert submitted.returncode == 0, submitted.stderr
    started = Processes()
    try:
        with (tmp / "worker.log").open("wb") as log:
            worker = started.start([*memq, "worker", "--gpus", ",".join(map(str, range(16))), "--poll", "0.2",
                                    "--heartbeat", "1", "--idle-exit", "5", "--retry-backoff", "0"],
                                   env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        assert worker.wait(timeout=600) == 0, (tmp / "worker.log").read_text()[-3000:]
    finally:
        started.reap()
    store = open_store(RootOptions(root=str(root)), create=False)
    jobs = store.jobs(grid="mindeye2")
    return {"src": src, "jobs": jobs, "records": records(tmp / "record.jsonl"), "store": store,
            "log": (tmp / "worker.log").read_text()}


def test_every_published_model_trains_with_the_readme_s_arguments(ran: dict[str, Any]) -> None:
    assert len(ran["jobs"]) == 37 and {j["state"] for j in ran["jobs"]} == {"succeeded"}, ran["log"][-3000:]
    trained = [r for r in ran["records"] if r["tool"] == "accelerate"]
    got = {option(r["argv"], "model_name"): set(r["argv"][r["argv"].index(next(
        a for a in r["argv"] if a.endswith("Train.py"))) + 1:]) for r in trained}
    assert len(trained) == len(got) == 13
    assert got == published(ran["src"])


def test_notebooks_are_converted_into_each_job_s_directory_first(ran: dict[str, Any]) -> None:
    converted = {}
    for r in ran["records"]:
        if r["tool"] == "jupyter":
            out = Path(option(r["argv"], "output-dir")) / (option(r["argv"], "output") + ".py")
            assert r["argv"][:3] == ["nbconvert", "--to", "python"] and r["argv"][-1].startswith(str(ran["src"]))
            converted[str(out)] = r
    runs = [r for r in ran["records"] if r["tool"] != "jupyter"]
    assert len(runs) == len(converted) == 37  # one conversion per job, each into its own directory
    for r in runs:
        script = next(a for a in r["argv"] if a.endswith(".py"))
        assert r["script_exists"] and converted[script]["end"] <= r["start"]
        assert Path(script).parent.name == "scripts" and "/jobs/mindeye2/" in script
        assert r["cwd"] == str(ran["src"]) and r["env"]["PYTHONPATH"].split(os.pathsep)[0] == str(ran["src"])
        assert r["env"]["VIRTUAL_ENV"] == str(ran["src"] / "fmri")


def test_train_runs_deepspeed_stage_2_on_the_job_s_gpus_with_accel_slurm_s_environment(ran: dict[str, Any]) -> None:
    for r in (r for r in ran["records"] if r["tool"] == "accelerate"):
        config = yaml.safe_load(r["config"])
        assert config["distributed_type"] == "DEEPSPEED" and config["num_processes"] == 8
        assert config["deepspeed_config"]["zero_stage"] == 2
        assert config["deepspeed_config"]["offload_optimizer_device"] == "cpu"
        assert "/jobs/mindeye2/" in option(r["argv"], "config_file")  # the job's directory, not ~/.cache
        assert option(r["argv"], "num_processes") == "8" and option(r["argv"], "mixed_precision") == "fp16"
        env = r["env"]
        batch = int(option(r["argv"], "batch_size"))
        assert env["NUM_GPUS"] == "8" and env["BATCH_SIZE"] == str(batch)
        assert env["GLOBAL_BATCH_SIZE"] == str(8 * batch) and env["COUNT_NODE"] == "1"
        assert len(env["CUDA_VISIBLE_DEVICES"].split(",")) == 8
        assert option(r["argv"], "main_process_port") == env["MASTER_PORT"]
        assert option(r["argv"], "main_process_ip") == env["MASTER_ADDR"] == "127.0.0.1"
    for r in (r for r in ran["records"] if r["tool"] == "python"):  # inference: one GPU, no launcher
        assert len(r["env"]["CUDA_VISIBLE_DEVICES"].split(",")) == 1 and r["env"]["NUM_GPUS"] == "1"


def test_jobs_running_together_have_ports_of_their_own(ran: dict[str, Any]) -> None:
    runs = [r for r in ran["records"] if r["tool"] != "jupyter"]
    together = [(a, b) for a, b in combinations(runs, 2) if a["start"] < b["end"] and b["start"] < a["end"]]
    assert together  # 16 GPUs: two 8-GPU trainings (or many inferences) at once
    assert all(a["env"]["MASTER_PORT"] != b["env"]["MASTER_PORT"] for a, b in together)


def test_each_step_waits_for_the_one_it_reads_and_only_for_it(ran: dict[str, Any]) -> None:
    by_model: dict[tuple[str, str], dict[str, Any]] = {}
    for r in ran["records"]:
        if r["tool"] != "jupyter":
            script = next(a for a in r["argv"] if a.endswith(".py"))
            by_model[(option(r["argv"], "model_name"), Path(script).stem)] = r
    for s in SUBJECTS:
        pretrain = by_model[(f"final_multisubject_subj0{s}", "Train")]
        for n in (40, 1):
            model = f"final_subj0{s}_pretrained_{n}sess_24bs"
            chain = [pretrain, *(by_model[(model, nb)] for nb in
                                 ("Train", "recon_inference", "enhanced_recon_inference", "final_evaluations"))]
            assert all(a["end"] <= b["start"] for a, b in pairwise(chain)), model
    rows = {j["id"]: j for j in ran["jobs"]}
    groups = {g["name"]: g for g in ran["store"].groups("mindeye2")}
    finetunes = [j for j in ran["jobs"] if j["group"].startswith("finetune")]
    assert len(finetunes) == 8
    for job in finetunes:  # the store's edges: a fine-tune waits for its subject's pretraining alone
        waits = [rows[d["id"]] for d in groups[job["group"]]["after_jobs"]]
        assert [(w["group"], w["params"]["subj"]) for w in waits] == [("pretrain", job["params"]["subj"])]


@pytest.mark.parametrize(("params", "says"), [
    ({"notebook": "train", "args": {"batch_size": 24}}, "notebook: Input should be 'Train'"),
    ({"notebook": "Train", "args": {"subj": 1}}, "notebook Train needs args.batch_size"),
    ({"notebook": "recon_inference", "venvv": "/x"}, "param 'venvv' is not a setting of mindeye2.run"),
    ({"notebook": "recon_inference", "args": {"model_name": "m{subject}"}}, "uses {subject}, which is not a param"),
])
def test_bad_params_are_refused_at_submit_in_one_line(tmp_path: Path, params: dict[str, Any], says: str) -> None:
    grid = tmp_path / "bad.yaml"
    grid.write_text(yaml.safe_dump({"name": "bad", "groups": [
        {"name": "ok", "kind": "mindeye2.run", "params": {"repo": "/r", "notebook": "final_evaluations"}},
        {"name": "g", "kind": "mindeye2.run", "params": {"repo": "/r", **params}}]}, sort_keys=False))
    root = tmp_path / "root"
    out = subprocess.run([sys.executable, "-m", "memq", "--root", str(root), "submit", str(grid)],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    line = re.match(rf"error: {re.escape(str(grid))}:(\d+): ", out.stderr)
    assert line and int(line[1]) >= 8 and says in out.stderr, out.stderr  # a line of group g (from line 8)
    assert not (root / "jobs").exists()


def test_a_missing_checkout_venv_or_dataset_fails_at_once_naming_the_fix(tmp_path: Path) -> None:
    src = make_checkout(tmp_path / "MindEyeV2")
    base = {"repo": str(tmp_path / "MindEyeV2"), "notebook": "recon_inference"}
    check_inputs(parse(base))  # the README's layout: everything in src/
    for params, says in (({"repo": str(tmp_path / "elsewhere")}, "must be a MindEyeV2 clone"),
                         ({"venv": str(tmp_path / "venv")}, "run `. setup.sh` in"),
                         ({"cache_dir": str(src / "cache")}, "cache_dir"),
                         ({"data_path": str(tmp_path / "data")}, "download the pscotti/mindeyev2 dataset")):
        with pytest.raises(PermanentError, match=re.escape(says)):
            check_inputs(parse({**base, **params}))
