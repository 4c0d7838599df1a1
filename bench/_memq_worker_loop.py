"""One benchmark process: register a worker and push no-op jobs through claim -> finish."""

from __future__ import annotations

import sys
import time

from memq.root import RootOptions, open_store
from memq.store.types import Capacity, Outcome


def main(root: str, db: str | None, name: str, out: str) -> None:
    store = open_store(RootOptions(root=root, db=db or None), create=False)
    me = store.register_worker(name, "bench", 0, "bench", [], 1, 60)
    done = None
    ids = []
    start = time.perf_counter()
    while True:
        _, claim = store.claim(me, Capacity(slots=1), done)
        if claim is None:
            break
        ids.append(claim.job_id)
        done = Outcome(claim.job_id, claim.attempt, "succeeded")
    elapsed = time.perf_counter() - start
    with open(out, "w") as fh:
        fh.write(f"{elapsed}\n" + "\n".join(map(str, ids)))


if __name__ == "__main__":
    main(*sys.argv[1:5])
