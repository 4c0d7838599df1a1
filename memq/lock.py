"""A lease lock that excludes across hosts sharing a network filesystem.

flock/fcntl locks are not forwarded reliably between NFS (or sshfs) clients, so this lock is
taken by creating a name atomically on the server: ``symlink(marker, path)``. The symlink's target
is the marker: host, pid, boot id, a random token and the acquire time. Protocol (design.md 4):

* A waiter breaks a lock whose marker has not changed for ``grace`` seconds measured on the
  waiter's own monotonic clock, so no two hosts need agreeing clocks. A lock held by a process
  that provably died on this very host (same boot, pid gone) is broken at once.
* Breaking renames the link to a unique name and only then unlinks it, so of two breakers only
  one wins. If the renamed link turns out to be a fresh lock (it was re-taken between our look
  and our rename) it is put back.
* The holder fences itself: past ``grace / 2`` after acquiring, or when the name no longer
  carries its marker, ``check()`` raises :class:`LockLost` and the caller rolls back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from memq.host import BOOT, NAME, runs_here

DEFAULT_GRACE = float(os.environ.get("MEMQ_LOCK_GRACE", "20"))
_HELD_ERRNOS = {errno.EEXIST, errno.EPERM, errno.EACCES}
_FIRST_PAUSE = 0.0005
_PAUSE_CAP = 0.002  # between two tries of the name (each is two round trips to the server)
_LOOK_EVERY = 0.05  # seconds between two reads of a held lock's marker (for staleness)


def _pause(delay: float) -> float:
    """Sleep about ``delay`` (jittered); returns the next delay. The cap is short: waiters that sleep
    long lose every race to a holder that re-takes the lock at once (measured: one process got 16
    of 1,000 claims with a 50 ms cap), and a long sleep delays the hand-over."""
    time.sleep(delay * (0.5 + random.random()))
    return min(delay * 2, _PAUSE_CAP)


class LockError(RuntimeError):
    """The lock could not be taken in time."""


class LockLost(LockError):
    """The holder lost the lock (stalled past grace/2 or broken): it must roll back."""


@dataclass(frozen=True)
class Marker:
    """What a lock name points at: who holds it."""

    host: str
    pid: int
    boot: str
    token: str
    acquired: float

    def encode(self) -> str:
        return f"memq-lock:{self.host}:{self.pid}:{self.boot}:{self.token}:{self.acquired:.3f}"

    @classmethod
    def decode(cls, text: str) -> Marker | None:
        parts = text.split(":")
        if len(parts) != 6 or parts[0] != "memq-lock":
            return None
        try:
            return cls(parts[1], int(parts[2]), parts[3], parts[4], float(parts[5]))
        except ValueError:
            return None

    def provably_dead(self) -> bool:
        """True when the holder ran on this host in this boot and its pid is gone."""
        return runs_here(self.host, self.boot, self.pid) is False


def _readlink(path: Path | str, dir_fd: int | None = None) -> str | None:
    try:
        return os.readlink(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # not a symlink: someone else's file; treat as a foreign marker
            return "foreign:not-a-symlink"
        raise


class LeaseLock:
    """One exclusive lock name, held for one short transaction at a time.

    Names are reached through a descriptor of their directory: on a network filesystem every
    component of a path costs a round trip to the server (a lookup), and this lock is taken and
    given back once per transaction.
    """

    def __init__(self, path: str | os.PathLike[str], grace: float = DEFAULT_GRACE,
                 timeout: float | None = None) -> None:
        self.path = Path(path)
        self.grace = grace
        self.timeout = timeout if timeout is not None else max(4 * grace, 60.0)
        self._marker: str | None = None
        self._acquired_mono = 0.0
        self._checked = False
        self._dir_fd: int | None = None
        self.breaks = 0

    def _dir(self) -> int:
        if self._dir_fd is None:
            self._dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        return self._dir_fd

    def close(self) -> None:
        """Close the directory descriptor (the lock must not be held)."""
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    @property
    def held(self) -> bool:
        return self._marker is not None

    def acquire(self) -> None:
        """Take the lock, breaking a stale one if needed; raises LockError after ``timeout``."""
        if self._marker is not None:
            raise LockError(f"{self.path}: already held by this object")
        start = time.monotonic()
        name, dir_fd = self.path.name, self._dir()
        seen: str | None = None
        seen_since = start
        looked = -_LOOK_EVERY
        delay = _FIRST_PAUSE
        while True:
            marker = Marker(NAME, os.getpid(), BOOT, secrets.token_hex(8), time.time()).encode()
            try:
                os.symlink(marker, name, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno not in _HELD_ERRNOS:
                    raise
            else:
                self._marker, self._checked = marker, False
                self._acquired_mono = time.monotonic()
                return
            now = time.monotonic()
            if now - looked < _LOOK_EVERY:  # markers are unique: sampling them misses no change
                delay = _pause(delay)
                continue
            looked = now
            current = _readlink(name, dir_fd)
            if current is None:
                continue  # released between our attempt and our look: try again at once
            if current != seen:
                seen, seen_since = current, now
            decoded = Marker.decode(current)
            if (decoded is not None and decoded.provably_dead()) or now - seen_since > self.grace:
                if self._break(current):
                    self.breaks += 1
                seen = None
                continue
            if now - start > self.timeout:
                raise LockError(f"{self.path}: still held by {current!r} after {self.timeout:.0f}s")
            delay = _pause(delay)

    def _break(self, expected: str) -> bool:
        """Remove the lock name if it still carries ``expected``; restore it if it did not."""
        name, dir_fd = self.path.name, self._dir()
        aside = f"{name}.stale.{secrets.token_hex(6)}"
        try:
            os.rename(name, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except FileNotFoundError:
            return False
        taken = _readlink(aside, dir_fd)
        if taken is not None and taken != expected:
            # We moved a lock that was re-taken since our look: put it back. If someone else
            # took the name meanwhile, the holder we displaced fails its check() and rolls back.
            try:
                os.symlink(taken, name, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno not in _HELD_ERRNOS:
                    raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside, dir_fd=dir_fd)
        return taken == expected

    def check(self) -> None:
        """Raise LockLost unless this object still safely holds the lock (call before commit)."""
        if self._marker is None:
            raise LockLost(f"{self.path}: not held")
        age = time.monotonic() - self._acquired_mono
        if age > self.grace / 2:
            raise LockLost(f"{self.path}: held {age:.1f}s, past grace/2 ({self.grace / 2:.1f}s)")
        if _readlink(self.path.name, self._dir()) != self._marker:
            raise LockLost(f"{self.path}: the lock was broken by another process")
        self._checked = True

    def release(self) -> None:
        """Give the lock back; never removes a lock that another process has taken since.

        After a passed check() and while younger than grace/2 the name is still ours (a waiter
        breaks only a marker it has seen unchanged for grace), so one unlink gives it back;
        otherwise the name is moved aside first and put back if it was someone else's.
        """
        marker, self._marker = self._marker, None
        if marker is None:
            return
        if self._checked and time.monotonic() - self._acquired_mono < self.grace / 2:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path.name, dir_fd=self._dir())
        elif _readlink(self.path.name, self._dir()) == marker:
            self._break(marker)

    def __enter__(self) -> LeaseLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def describe(self) -> str:
        """Who holds the lock now, for `memq db check`."""
        current = _readlink(self.path)
        if current is None:
            return "free"
        decoded = Marker.decode(current)
        if decoded is None:
            return f"held by an unknown marker {current!r}"
        dead = " (holder is dead on this host)" if decoded.provably_dead() else ""
        return f"held by pid {decoded.pid} on {decoded.host}{dead}"

