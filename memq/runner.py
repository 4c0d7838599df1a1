"""`python -m memq.runner`: the job process of a Python job kind.

It builds the JobContext from the MEMQ_* environment the worker set, resolves the kind by name
and calls it. Exit codes: 0 done, 1 the job raised, 75 fenced, 76 out of GPU memory (torch's
OutOfMemoryError, known by name: memq does not import torch), 78 the kind cannot run here (not
implemented, bad parameters): retrying would not help.
"""

from __future__ import annotations

import sys
import traceback
from typing import TYPE_CHECKING

# Jobs raise memq.runner.PermanentError; it lives in memq.errors so that it is the same class
# when this module runs as __main__ (python -m memq.runner).
from memq.errors import PermanentError
from memq.jobenv import EXIT_FENCED, EXIT_GPU_OOM, EXIT_PERMANENT

if TYPE_CHECKING:
    from memq.context import JobContext

__all__ = ["EXIT_FENCED", "EXIT_GPU_OOM", "EXIT_PERMANENT", "PermanentError", "main"]


def out_of_gpu_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (torch.cuda.OutOfMemoryError), recognised without importing torch."""
    return any(cls.__name__ == "OutOfMemoryError" and cls.__module__.startswith("torch")
               for cls in type(exc).__mro__)


def _sync_own_checkpoints(ctx: JobContext) -> None:
    """Copy this job's checkpoints to the shared store now, while their node is still at hand."""
    report = ctx.sync_checkpoints()
    print(f"memq: synced {len(report.copied)} checkpoints to the shared store", file=sys.stderr, flush=True)
    for problem in report.unreachable + report.corrupt:
        print(f"memq: sync: {problem}", file=sys.stderr, flush=True)


def main() -> int:
    from memq import kinds
    from memq.context import JobContext
    from memq.errors import Fenced, UserError

    ctx = JobContext.from_env()
    try:
        spec = kinds.lookup(ctx.kind)
        if spec is None:
            raise kinds.KindNotImplemented("kind `command` runs an argv, not a Python function")
        run = kinds.entry_function(spec)
    except (KeyError, kinds.KindNotImplemented) as exc:
        print(f"memq: cannot run job kind {ctx.kind!r}: {exc}", file=sys.stderr, flush=True)
        return EXIT_PERMANENT
    try:
        run(ctx)
        if ctx.sync:
            _sync_own_checkpoints(ctx)
    except Fenced as exc:
        print(f"memq: {exc}; stopping", file=sys.stderr, flush=True)
        return EXIT_FENCED
    except (PermanentError, UserError) as exc:
        message = exc.line() if isinstance(exc, UserError) else f"error: {exc}"
        print(f"memq: {message} (not retried)", file=sys.stderr, flush=True)
        return EXIT_PERMANENT
    except Exception as exc:
        traceback.print_exc()
        return EXIT_GPU_OOM if out_of_gpu_memory(exc) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
