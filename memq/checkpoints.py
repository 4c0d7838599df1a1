"""Checkpoint files: copied only with their checksum verified, read only with it verified.

A checkpoint is registered (path on its node, size, sha256) by the attempt that wrote it, on
node-local scratch. `memq sync` (or the job itself, right after it succeeds) copies it to the
shared store (where memq.paths.checkpoint_copy says); the registry then points at the copy.
Nothing is ever loaded before its bytes hash to the registered sha256.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import IO, Any

from memq.files import publishing
from memq.paths import checkpoint_copy

CHUNK = 1 << 22
SOUP_ARTIFACT = "soup"  # the registry kind under which a soup job registers its soup (at the trained job)


class ChecksumError(RuntimeError):
    """A file's bytes do not hash to what the registry says."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, size: int, sha256: str) -> None:
    """Raise ChecksumError unless ``path`` has exactly the registered size and sha256."""
    if not path.is_file():
        raise ChecksumError(f"{path}: missing")
    if path.stat().st_size != size:
        raise ChecksumError(f"{path}: {path.stat().st_size} bytes, registered {size}")
    found = sha256_file(path)
    if found != sha256:
        raise ChecksumError(f"{path}: sha256 {found[:12]}..., registered {sha256[:12]}...")


def load_verified(row: dict[str, Any], *, map_location: str = "cpu") -> Any:
    """torch.load a registered checkpoint (its synced copy if any), after checking its sha256."""
    import torch

    path = Path(row["synced_path"] or row["path"])
    verify(path, row["size"], row["sha256"])
    return torch.load(path, map_location=map_location, weights_only=True)


def shared_copy_path(root: Path, row: dict[str, Any], grid: str) -> Path:
    return checkpoint_copy(root, grid, row["job_id"], row["attempt"], Path(row["path"]).name)


def copy_verified(source: IO[bytes], dest: Path, size: int, sha256: str) -> None:
    """Stream ``source`` into ``dest`` atomically, publishing it only if size and sha256 match."""
    digest, written = hashlib.sha256(), 0
    with publishing(dest) as tmp, tmp.open("wb") as fh:
        while block := source.read(CHUNK):
            digest.update(block)
            fh.write(block)
            written += len(block)
        if written != size or digest.hexdigest() != sha256:
            raise ChecksumError(f"{dest.name}: source has {written} bytes / sha256 {digest.hexdigest()[:12]}..., "
                                f"registered {size} / {sha256[:12]}...")


def pull(row: dict[str, Any], dest: Path, *, remote: bool) -> str:
    """Copy a registered checkpoint to ``dest`` from this host, or over ssh from its host.

    Returns how it was reached ('local' or 'ssh'); raises FileNotFoundError when it cannot be.
    MEMQ_SSH_OPTIONS (comma-separated ssh -o options) reaches hosts that need them.
    """
    source = Path(row["path"])
    if row.get("host") in (None, socket.gethostname()):
        # Only this host's own file: another node's scratch path may exist here too, with other bytes.
        if not source.is_file():
            raise FileNotFoundError(f"{source}: gone")
        with source.open("rb") as fh:
            copy_verified(fh, dest, row["size"], row["sha256"])
        return "local"
    if not remote:
        raise FileNotFoundError(f"{source} is on {row['host']} (run `memq sync` there, or --remote)")
    ssh = shutil.which("ssh")
    if ssh is None:
        raise FileNotFoundError("no ssh client to reach " + str(row["host"]))
    extra = [opt for opt in os.environ.get("MEMQ_SSH_OPTIONS", "").split(",") if opt]
    options = [arg for opt in ["BatchMode=yes", *extra] for arg in ("-o", opt)]
    proc = subprocess.Popen([ssh, *options, row["host"], "cat", "--", str(source)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        copy_verified(proc.stdout, dest, row["size"], row["sha256"])
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        if proc.wait() != 0:
            raise FileNotFoundError(f"{row['host']}:{source}: {err or 'ssh failed'}")
    return "ssh"
