"""Run the `memq` command line with every store transaction logged (benchmark instrumentation only).

    MEMQ_BENCH_TXLOG=/tmp/w1.tx python bench/_counting_worker.py --root R worker ...

memq itself is not changed: this process wraps ``Backend.run`` (the one place every transaction of
every backend goes through) before the CLI starts, and appends one line per transaction to the log:
``<epoch seconds> <r|w> <the transaction's function>``, e.g. ``QueueOps.claim_many.<locals>.tx``.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> None:
    from memq.store import backends

    log = open(os.environ["MEMQ_BENCH_TXLOG"], "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    original = backends.Backend.run

    def run(self, fn, *, write=True):  # type: ignore[no-untyped-def]
        try:
            return original(self, fn, write=write)
        finally:
            log.write(f"{time.time():.6f} {'w' if write else 'r'} {getattr(fn, '__qualname__', repr(fn))}\n")

    backends.Backend.run = run  # type: ignore[method-assign]
    from memq.cli import main as cli_main

    sys.argv = ["memq", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
