"""A job for the worker tests: proves attempts of one job never overlap.

    jobscript.py OUTDIR JOB_ID ATTEMPT SECONDS [MODE[,MODE...]]

Holds an exclusive flock on OUTDIR/JOB.lock while it runs; a killed attempt's lock is released
by the kernel. If the lock is already held when an attempt starts, an earlier attempt of the same
job is still alive: it writes JOB.ATTEMPT.overlap. Records start (time, pids, its parent - the
supervisor -, working directory, GPUs, environment) in JOB.ATTEMPT.start and, when it ends on its
own, JOB.ATTEMPT.end. Modes:

* ``gate``: run until OUTDIR/JOB.go or OUTDIR/JOB.ATTEMPT.go exists (SECONDS is then only a cap),
  so a test decides when the job ends instead of guessing how long its worker takes;
* ``fail``: exit 7 every time; ``failfirst``: on attempt 1 only; ``permanent``: exit 78;
* ``oom``: say "CUDA out of memory" as PyTorch does and exit 1; ``oomfirst``: on attempt 1 only;
* ``child``: also leave a grandchild `sleep` whose pid it records, to prove no job process
  outlives its worker.
"""

import fcntl
import json
import os
import subprocess
import sys
import time

out, job, attempt, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
modes = set(sys.argv[5].split(",")) if len(sys.argv) > 5 else set()
lock = open(os.path.join(out, f"{job}.lock"), "w")  # noqa: SIM115 - held for the process's life
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    open(os.path.join(out, f"{job}.{attempt}.overlap"), "w").close()
    fcntl.flock(lock, fcntl.LOCK_EX)
pids = [os.getpid()]
if "child" in modes:
    pids.append(subprocess.Popen(["sleep", "600"]).pid)
record = {"start": time.time(), "pids": pids, "ppid": os.getppid(), "cwd": os.getcwd(),
          "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
          "device_order": os.environ.get("CUDA_DEVICE_ORDER"), "threads": os.environ.get("OMP_NUM_THREADS"),
          "env_job": os.environ.get("MEMQ_JOB_ID"),
          "params": {k: v for k, v in os.environ.items() if k.startswith("MEMQ_PARAM_")}}


def write(name: str, data: dict) -> None:
    """Atomically: a test that sees the file reads all of it."""
    with open(os.path.join(out, name + ".tmp"), "w") as fh:
        json.dump(data, fh)
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))


write(f"{job}.{attempt}.start", record)
if "gate" in modes:
    gates = [os.path.join(out, f"{job}.go"), os.path.join(out, f"{job}.{attempt}.go")]
    deadline = time.monotonic() + seconds
    while not any(map(os.path.exists, gates)) and time.monotonic() < deadline:
        time.sleep(0.02)
else:
    time.sleep(seconds)
if "permanent" in modes:
    sys.exit(78)
if "oom" in modes or ("oomfirst" in modes and attempt == "1"):
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr)
    sys.exit(1)
if "fail" in modes or ("failfirst" in modes and attempt == "1"):
    sys.exit(7)
write(f"{job}.{attempt}.end", {"end": time.time()})
