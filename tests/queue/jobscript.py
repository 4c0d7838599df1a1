"""A job for the worker tests: proves attempts of one job never overlap.

    jobscript.py OUTDIR JOB_ID ATTEMPT SECONDS [fail|failfirst|child]

Holds an exclusive flock on OUTDIR/JOB.lock while it runs; a killed attempt's lock is released
by the kernel. If the lock is already held when an attempt starts, an earlier attempt of the same
job is still alive: it writes JOB.ATTEMPT.overlap. ``fail`` exits 7 every time, ``failfirst`` on
attempt 1 only. Records start/end (time, pid, GPUs); `child`
also leaves a grandchild `sleep` whose pid it records, to prove no job process outlives its worker.
"""

import fcntl
import json
import os
import subprocess
import sys
import time

out, job, attempt, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
mode = sys.argv[5] if len(sys.argv) > 5 else ""
lock = open(os.path.join(out, f"{job}.lock"), "w")  # noqa: SIM115 - held for the process's life
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    open(os.path.join(out, f"{job}.{attempt}.overlap"), "w").close()
    fcntl.flock(lock, fcntl.LOCK_EX)
pids = [os.getpid()]
if mode == "child":
    pids.append(subprocess.Popen(["sleep", "120"]).pid)
record = {"start": time.time(), "pids": pids, "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
          "threads": os.environ.get("OMP_NUM_THREADS"),
          "env_job": os.environ.get("MEMQ_JOB_ID")}
with open(os.path.join(out, f"{job}.{attempt}.start"), "w") as fh:
    json.dump(record, fh)
time.sleep(seconds)
if mode == "fail" or (mode == "failfirst" and attempt == "1"):
    sys.exit(7)
with open(os.path.join(out, f"{job}.{attempt}.end"), "w") as fh:
    json.dump({"end": time.time()}, fh)
