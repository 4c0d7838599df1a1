"""memq.host: whether a process recorded as (host, boot, pid) still runs, judged only where it can be."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from memq import host
from memq.lock import Marker


def _ended_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_process_of_this_boot_is_judged_by_its_pid() -> None:
    assert host.runs_here(host.NAME, host.BOOT, os.getpid()) is True
    assert host.runs_here(host.NAME, host.BOOT, _ended_pid()) is False


def test_another_host_another_boot_or_an_unknown_boot_cannot_be_judged() -> None:
    me = os.getpid()
    assert host.runs_here("some-other-host", host.BOOT, me) is None
    assert host.runs_here(host.NAME, "an-earlier-boot", me) is None
    assert host.runs_here(host.NAME, host.UNKNOWN_BOOT, me) is None


def test_the_lock_and_the_store_judge_a_holder_the_same_way(tmp_path) -> None:
    from memq.errors import UserError
    from memq.root import RootOptions, open_store

    gone = _ended_pid()
    assert Marker(host.NAME, gone, host.BOOT, "tok", 0.0).provably_dead()
    assert not Marker(host.NAME, os.getpid(), host.BOOT, "tok", 0.0).provably_dead()
    st = open_store(RootOptions(root=str(tmp_path / "root")), create=True)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        first = st.register_worker("w", host.NAME, running.pid, host.BOOT, [], 1, 30.0)
        with pytest.raises(UserError, match="already runs on this host"):
            st.register_worker("w", host.NAME, os.getpid(), host.BOOT, [], 1, 30.0)
    finally:
        running.kill()
        running.wait()
    again = st.register_worker("w", host.NAME, os.getpid(), host.BOOT, [], 1, 30.0)  # its last life ended
    assert (again.id, again.incarnation) == (first.id, 2)
