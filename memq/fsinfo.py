"""Is a directory on a filesystem that only this host writes to?

SQLite's own locks and WAL are sound only on a local filesystem (design.md 4). We read the
filesystem type from /proc/self/mountinfo (the longest mount point containing the path) and call
anything not known to be local "shared".
"""

from __future__ import annotations

import os
from pathlib import Path

LOCAL_FILESYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs", "f2fs", "jfs", "reiserfs", "overlay",
     "ramfs", "bcachefs", "apfs", "hfs", "ntfs3"}
)


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def filesystem_type(path: str | os.PathLike[str]) -> str:
    """The type of the filesystem holding ``path`` (e.g. 'ext4', 'nfs4', 'fuse.sshfs')."""
    target = Path(path).resolve()
    while not target.exists():
        target = target.parent
    best, best_type = "", "unknown"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount_point = _unescape(fields[4])
        inside = str(target) == mount_point or str(target).startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, right.split()[0]
    return best_type


def is_local(path: str | os.PathLike[str]) -> bool:
    return filesystem_type(path) in LOCAL_FILESYSTEMS
