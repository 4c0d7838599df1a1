"""This host, its boot, and whether a process recorded on it still runs.

A pid names a process only within one boot of one host, so memq records all three (in a lock's
marker, in a worker's row) and judges liveness only where it can: on the same host, in the same
boot. Everything else - another host, another boot, a host without a boot id - cannot be told
from here and is left to heartbeats and lease expiry.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

UNKNOWN_BOOT = "unknown"


def boot_id() -> str:
    """An id of this boot of this host ("unknown" where the kernel does not give one)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return UNKNOWN_BOOT


NAME = socket.gethostname()
BOOT = boot_id()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host; a stopped process, or one of another
    user that we may not signal, counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def runs_here(host: str, boot: str, pid: int) -> bool | None:
    """Whether the process recorded as (``host``, ``boot``, ``pid``) still runs; None when this
    host cannot tell (recorded on another host or in another boot, or the boot id is unknown)."""
    if host != NAME or boot != BOOT or boot == UNKNOWN_BOOT:
        return None
    return pid_alive(pid)
