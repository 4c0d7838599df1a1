"""A stand-in MindEyeV2 checkout: its four notebooks, and an `fmri` venv whose `jupyter`,
`accelerate` and `python` record their argv, working directory, environment and the accelerate
config they were given (one JSON line each in the file RECORD names), write what the real ones
would write (the converted script, train_logs/MODEL, evals/MODEL) and take a second, so that jobs
of a worker overlap."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

NOTEBOOKS = ("Train", "recon_inference", "enhanced_recon_inference", "final_evaluations")
ENV = ("NUM_GPUS", "BATCH_SIZE", "GLOBAL_BATCH_SIZE", "MASTER_ADDR", "MASTER_PORT", "HOSTNAMES", "COUNT_NODE",
       "CUDA_VISIBLE_DEVICES", "PYTHONPATH", "VIRTUAL_ENV", "MEMQ_JOB_ID")

TOOL = '''#!{python}
import json, os, sys, time
from pathlib import Path
tool, args, start = Path(sys.argv[0]).name, sys.argv[1:], time.time()
options = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
record = {{"tool": tool, "argv": args, "cwd": os.getcwd(), "start": start,
          "env": {{k: os.environ.get(k) for k in {env!r}}}}}
if tool == "jupyter":
    out = Path(options["output-dir"]) / (options["output"] + ".py")
    out.write_text("# converted from " + args[-1] + "\\n")
else:
    script = next(a for a in args if a.endswith(".py"))
    record["script_exists"] = Path(script).is_file()
    if "config_file" in options:
        record["config"] = Path(options["config_file"]).read_text()
    model = options.get("model_name", "none")
    made = Path("../train_logs" if Path(script).stem == "Train" else "evals") / model
    made.mkdir(parents=True, exist_ok=True)
    (made / (Path(script).stem + ".done")).write_text("")
    time.sleep(1.0)
record["end"] = time.time()
with open(os.environ["RECORD"], "a") as fh:
    fh.write(json.dumps(record) + "\\n")
'''


def make_checkout(repo: Path) -> Path:
    """The checkout at ``repo`` (data and cache in src/, as the README downloads them); returns src/."""
    src = repo / "src"
    venv = src / "fmri" / "bin"
    venv.mkdir(parents=True)
    for name in NOTEBOOKS:
        (src / f"{name}.ipynb").write_text(json.dumps({"cells": [], "nbformat": 4, "nbformat_minor": 5}))
    for tool in ("jupyter", "accelerate", "python"):
        path = venv / tool
        path.write_text(TOOL.format(python=sys.executable, env=ENV))
        path.chmod(0o755)
    return src


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]
