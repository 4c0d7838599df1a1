"""Round trips to the server per claim + finish in shared mode (issue 2): what the two-host rig's
throughput is made of.

    python bench/twohost_requests.py             # 30 jobs through one process, requests per job by type
    python bench/twohost_requests.py --jobs 100 --queue 20000
    python bench/twohost_requests.py --batch 16  # 16 jobs per transaction, as a worker claims short jobs

Mounts the rig's directory a third time (same sshfs options as ../shared/tools/twohost-fs, plus
sshfs's own request log), runs one claim -> finish loop of memq on a fresh root there and counts
the SFTP requests the loop caused, by type. Every request is a round trip through ssh; on the rig
each costs about 0.1 ms, and a transaction holds the lock for all of its requests. Needs root, the
rig (`twohost-fs up`) and its state directory (TWOHOST_STATE, default /tmp/twohost-fs).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import Cleanup, machine_line, table, twohost_mounts

REQUEST = re.compile(rb"\[\d+\] ([A-Z_]+)")


def served_directory(mount: Path) -> str:
    """`user@host:/dir` that a rig mount shows."""
    for line in Path("/proc/mounts").read_text().splitlines():
        source, point, fstype, *_ = line.split()
        if point == str(mount) and fstype == "fuse.sshfs":
            return source
    raise SystemExit(f"{mount} is not an sshfs mount")


def mount_logged(source: str, state: Path, log: Path, cleanup: Cleanup) -> Path:
    point = Path(tempfile.mkdtemp(prefix="memq-requests-"))
    port = (state / "port").read_text().strip()
    proc = subprocess.Popen(
        ["sshfs", "-f", "-o", "sshfs_debug", "-p", port,
         "-o", f"IdentityFile={state / 'key'},StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null",
         "-o", "cache=no,attr_timeout=0,entry_timeout=0,negative_timeout=0", source, str(point)],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    cleanup.add(lambda: (subprocess.run(["fusermount", "-u", str(point)], check=False), proc.wait(), point.rmdir()))
    deadline = time.monotonic() + 20
    while not os.path.ismount(point):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"sshfs did not mount {source} (see {log})")
        time.sleep(0.1)
    return point


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=30, help="claim + finish transactions counted (30)")
    ap.add_argument("--queue", type=int, default=400, help="jobs in the queue (400)")
    ap.add_argument("--batch", type=int, default=1,
                    help="jobs each transaction finishes and claims (1; `memq worker` claims up to 16 short jobs)")
    args = ap.parse_args()
    mounts = twohost_mounts()
    if mounts is None:
        raise SystemExit("two-host rig not mounted (twohost-fs up /srv/twohost /mnt/hostA /mnt/hostB)")
    from memq.options import RootOptions
    from memq.root import open_store
    from memq.spec import GridSpec, GroupSpec, JobSpec
    from memq.store.types import Capacity, Outcome

    cleanup = Cleanup()
    try:
        log = Path(tempfile.mkstemp(prefix="memq-requests-", suffix=".log")[1])
        cleanup.add(log.unlink)
        point = mount_logged(served_directory(mounts[0]), Path(os.environ.get("TWOHOST_STATE", "/tmp/twohost-fs")),
                             log, cleanup)
        root = Path(tempfile.mkdtemp(prefix="root-", dir=point))
        cleanup.add(lambda: subprocess.run(["rm", "-rf", str(root)], check=False))
        store = open_store(RootOptions(root=str(root)), create=True)
        jobs = tuple(JobSpec("probe", "g", "command", {"i": i}, command=["true"]) for i in range(args.queue))
        store.submit(GridSpec("probe", (GroupSpec("g"),), jobs))
        me = store.register_worker("probe", "bench", os.getpid(), "bench", [], 1, 600.0)
        done: list[Outcome] = []
        for counted in (False, True):
            if counted:
                start_at = log.stat().st_size
            for _ in range(args.jobs if counted else 3):
                _, claims = store.claim_many(me, Capacity(slots=1), done, args.batch)
                assert len(claims) == args.batch, "queue too short for --jobs x --batch"
                done = [Outcome(c.job_id, c.attempt, "succeeded") for c in claims]
        time.sleep(0.5)  # (the log is written by sshfs)
        with log.open("rb") as fh:
            fh.seek(start_at)
            kinds = Counter(m.group(1).decode() for m in REQUEST.finditer(fh.read()))
        store.backend.dispose()
    finally:
        cleanup.run()
    total = sum(kinds.values())
    per_job = args.jobs * args.batch
    rows = [[kind, n, f"{n / args.jobs:.1f}", f"{n / per_job:.1f}"] for kind, n in kinds.most_common()]
    rows.append(["all", total, f"{total / args.jobs:.1f}", f"{total / per_job:.1f}"])
    print(machine_line())
    title = (f"SFTP requests of {args.jobs} transactions, each finishing and claiming {args.batch} job(s) "
             f"(shared mode, {args.queue}-job queue)")
    print(table(["request", "count", "per transaction", "per job"], rows, title=title))


if __name__ == "__main__":
    main()
