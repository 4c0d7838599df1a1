"""Kind ``mindeye2.run``: one MindEye2 notebook, converted and launched as the repository does.

1. The notebook is converted to a script in this attempt's directory (``jupyter nbconvert --to
   python``, the .slurm files' first step): every job converts its own copy, so jobs sharing a
   checkout never race on ``src/Train.py`` and a retry converts again.
2. The script runs in ``{repo}/src`` (its relative paths: ``../train_logs``, ``evals/``,
   ``generative_models/``) with ``src`` on PYTHONPATH and the ``fmri`` venv first on PATH, and
   with the variables accel.slurm exports for Train.py: NUM_GPUS, BATCH_SIZE, GLOBAL_BATCH_SIZE,
   MASTER_ADDR, MASTER_PORT (a port of its own per job: two jobs on a node never share one),
   HOSTNAMES and COUNT_NODE (one node: a job never spans nodes).
3. Train goes through ``accelerate launch`` with a configuration memq writes into the attempt's
   directory (DeepSpeed stage 2, optimiser offloaded to the CPU, on several GPUs: the README's
   multi-GPU set-up), never the user's ``~/.cache/huggingface/accelerate``.

Train.py saves no resumable state memq could use: a retried Train job trains from the start.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import yaml

from jobs.mindeye2.params import TRAIN, MindEye2Params, fill, parse
from memq.job import JobContext, PermanentError, write_text_atomically

PORTS = (20000, 40000)  # where MASTER_PORT is taken from


def run(ctx: JobContext) -> None:
    params = parse(ctx.params)
    check_inputs(params)
    script = convert(params, ctx.job_dir / "scripts")
    n_gpus = max(1, len(ctx.gpus))
    port = free_port(ctx.job_id)
    argv = [str(script), *params.argv()]
    if params.uses_accelerate:
        config = ctx.job_dir / "accelerate.yaml"
        write_text_atomically(config, yaml.safe_dump(accelerate_config(params, len(ctx.gpus))))
        argv = [str(params.venv_dir / "bin" / "accelerate"), "launch", f"--config_file={config}",
                f"--num_processes={n_gpus}", "--num_machines=1", "--main_process_ip=127.0.0.1",
                f"--main_process_port={port}", f"--mixed_precision={params.mixed_precision}", *argv]
    else:
        argv = [str(params.venv_dir / "bin" / "python"), *argv]
    env = {**venv_environment(params), **launch_variables(params, n_gpus, port)}
    ctx.report_progress(force=True, step=f"running {params.notebook}")
    print("memq: " + " ".join(argv), flush=True)
    code = subprocess.run(argv, cwd=params.src, env=env, check=False).returncode
    if code != 0:
        raise RuntimeError(f"{params.notebook} exited with {code} (its output is above)")
    outputs = written(params)
    write_text_atomically(ctx.job_dir / "result.json",
                          json.dumps({"notebook": params.notebook, "argv": argv, "outputs": outputs}, indent=2) + "\n")


def check_inputs(params: MindEye2Params) -> None:
    """The checkout, its venv and the data, where the README puts them; PermanentError naming the fix."""
    notebook = params.src / f"{params.notebook}.ipynb"
    if not notebook.is_file():
        raise PermanentError(f"{notebook} not found: repo must be a MindEyeV2 clone "
                             "(git clone https://github.com/MedARC-AI/MindEyeV2)")
    for tool in ("jupyter", "python", *(("accelerate",) if params.uses_accelerate else ())):
        if not os.access(params.venv_dir / "bin" / tool, os.X_OK):
            raise PermanentError(f"{params.venv_dir}/bin/{tool} not found: run `. setup.sh` in {params.src} "
                                 "(it makes the fmri venv there), or set venv")
    for name, path in (("data_path", params.data_dir), ("cache_dir", params.cache)):
        if not path.is_dir():
            raise PermanentError(f"{name} {path} is not a directory: download the pscotti/mindeyev2 dataset "
                                 "there (README, Installation step 3), or set it")


def convert(params: MindEye2Params, out: Path) -> Path:
    """The notebook as a script under ``out`` (repeatable: a rerun overwrites it)."""
    out.mkdir(parents=True, exist_ok=True)
    script = out / f"{params.notebook}.py"
    script.unlink(missing_ok=True)
    argv = [str(params.venv_dir / "bin" / "jupyter"), "nbconvert", "--to", "python", f"--output-dir={out}",
            f"--output={params.notebook}", str(params.src / f"{params.notebook}.ipynb")]
    print("memq: " + " ".join(argv), flush=True)
    code = subprocess.run(argv, cwd=params.src, env=venv_environment(params), check=False).returncode
    if code != 0 or not script.is_file():
        raise RuntimeError(f"jupyter nbconvert of {params.notebook}.ipynb failed (exit {code}; output above)")
    return script


def accelerate_config(params: MindEye2Params, n_gpus: int) -> dict[str, Any]:
    """accelerate's config file for a job on one node with ``n_gpus`` GPUs (0: the CPU)."""
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "NO", "machine_rank": 0,
        "main_training_function": "main", "mixed_precision": params.mixed_precision, "num_machines": 1,
        "num_processes": max(1, n_gpus), "rdzv_backend": "static", "same_network": True, "use_cpu": n_gpus == 0,
    }  # fmt: skip
    if n_gpus > 1:
        config["distributed_type"] = "MULTI_GPU"
        if params.deepspeed:
            config["distributed_type"] = "DEEPSPEED"
            config["deepspeed_config"] = {
                "zero_stage": 2, "offload_optimizer_device": "cpu", "offload_param_device": "none",
                "gradient_accumulation_steps": 1, "zero3_init_flag": False,
            }  # fmt: skip
    return config


def venv_environment(params: MindEye2Params) -> dict[str, str]:
    """The job's environment with the venv active (as `source fmri/bin/activate` makes it) and
    ``src`` importable from a script outside it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHOME"}
    env["VIRTUAL_ENV"] = str(params.venv_dir)
    env["PATH"] = os.pathsep.join(filter(None, [str(params.venv_dir / "bin"), env.get("PATH")]))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(params.src), env.get("PYTHONPATH")]))
    return env


def launch_variables(params: MindEye2Params, n_gpus: int, port: int) -> dict[str, str]:
    """What accel.slurm exports before it launches Train.py, for a job on this node alone."""
    variables = {"NUM_GPUS": str(n_gpus), "COUNT_NODE": "1", "HOSTNAMES": socket.gethostname(),
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    if params.notebook == TRAIN:
        batch = int(params.args["batch_size"])
        variables.update({"BATCH_SIZE": str(batch), "GLOBAL_BATCH_SIZE": str(batch * n_gpus)})
    return variables


def free_port(job_id: int) -> int:
    """A port nothing on this node listens on, tried from one that depends on the job id: jobs
    running together on a node (different ids) start from different ports."""
    low, high = PORTS
    start = low + job_id % (high - low)
    for offset in range(high - low):
        port = low + (start - low + offset) % (high - low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


def written(params: MindEye2Params) -> list[str]:
    """Where the notebook put its results (Train: ../train_logs/NAME, the others: evals/NAME)."""
    if "model_name" not in params.args:
        return []
    model = fill(str(params.args["model_name"]), params.variables())
    where = params.src.parent / "train_logs" / model if params.notebook == TRAIN else params.src / "evals" / model
    return [str(where)] if where.exists() else []
