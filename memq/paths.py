"""Where everything of a job lives: the one place that spells the root's and the scratch's layout.

    <root>/queue.db, queue.db.lock, queue.version      the queue (memq.store.backends)
    <root>/queue.busy                                  idle workers' hint to watch (memq.store.base)
    <root>/jobs/<grid>/<job>/attempt-<k>/               an attempt's own directory (MEMQ_JOB_DIR)
    <root>/jobs/<grid>/<job>/attempt-<k>/log.txt        what the job process printed
    <root>/checkpoints/<grid>/<job>/attempt-<k>/<name>  a checkpoint's verified copy (memq sync)
    <scratch>/<root tag>/<grid>/<job>/attempt-<k>/      the attempt's node-local scratch (MEMQ_SCRATCH_DIR)
    <root>/soups/<grid>/<job>/<recipe>.pt               a soup of a trained job (and <recipe>.json)
    <root>/predictions/<grid>/<job>/<recipe>/<split>/   a soup's predictions

Pure functions of their arguments: nothing here touches the filesystem.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

LOG = "log.txt"


def attempt_name(attempt: int) -> str:
    return f"attempt-{attempt}"


def job_dir(root: Path, grid: str, job_id: int, attempt: int) -> Path:
    """The shared directory of one attempt of a job."""
    return root / "jobs" / grid / str(job_id) / attempt_name(attempt)


def log_file(root: Path, grid: str, job_id: int, attempt: int) -> Path:
    return job_dir(root, grid, job_id, attempt) / LOG


def sibling_attempt_dir(attempt_dir: Path, attempt: int) -> Path:
    """The directory of another attempt of the job that owns ``attempt_dir``."""
    return attempt_dir.parent / attempt_name(attempt)


def root_tag(root: Path) -> str:
    """The root's name and a hash of its absolute path: roots on one node get apart scratch trees.

    Without it, two roots with a grid of the same name would write their job 1 into one directory
    and overwrite each other's checkpoints."""
    digest = hashlib.sha256(str(root.absolute()).encode()).hexdigest()[:12]
    return f"{root.absolute().name}-{digest}"


def scratch_dir(scratch: Path, root: Path, grid: str, job_id: int, attempt: int) -> Path:
    """An attempt's directory under a node's scratch."""
    return scratch / root_tag(root) / grid / str(job_id) / attempt_name(attempt)


def checkpoint_copy(root: Path, grid: str, job_id: int, attempt: int, name: str) -> Path:
    """Where `memq sync` puts the shared copy of a checkpoint file called ``name``."""
    return root / "checkpoints" / grid / str(job_id) / attempt_name(attempt) / name


def soup_path(root: Path, grid: str, job_id: int, recipe: str) -> Path:
    """The soup a soup job makes of trained job ``job_id``; its summary sits beside it as .json."""
    return root / "soups" / grid / str(job_id) / f"{recipe}.pt"


def prediction_dir(root: Path, grid: str, job_id: int, recipe: str, split: str) -> Path:
    """Where the predictions of a job's ``recipe`` soup on ``split`` go."""
    return root / "predictions" / grid / str(job_id) / recipe / split
