"""`memq sync`: verified copies to the shared store; corrupt files detected, never trusted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from memq.checkpoints import ChecksumError, load_verified
from memq.context import JobContext
from memq.spec import GridSpec, GroupSpec, JobSpec
from memq.store.types import Capacity, Outcome

from ..conftest import Rig, _need


def trained_job(rig: Rig, scratch: Path, host: str | None = None, n: int = 3) -> tuple[JobContext, list[Path]]:
    """A job that ran and registered ``n`` checkpoints on node-local scratch."""
    store = rig.store()
    store.submit(GridSpec("t", (GroupSpec("g"),), (JobSpec("t", "g", "command", {}, command=["true"]),)))
    me = store.register_worker("w", "node", os.getpid(), "b", [], 1, 30)
    _, claim = store.claim(me, Capacity(slots=1))
    ctx = JobContext(job_id=claim.job_id, attempt=claim.attempt, grid="t", group="g", kind="command", params={},
                     repeat=0, job_dir=rig.roots[0] / "jobs", scratch_dir=scratch, root=rig.roots[0], _store=store)
    paths = []
    for epoch in range(n):
        path = scratch / f"epoch-{epoch}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.full((4,), float(epoch))}, path)
        ctx.register_checkpoint(path, metric=epoch / 10, step=epoch)
        if host is not None:  # as if another node had registered it
            row = next(r for r in store.checkpoints(job_ids=[ctx.job_id]) if r["path"] == str(path))
            store.register_checkpoint(ctx.job_id, ctx.attempt, path=str(path), host=host, size=row["size"],
                                      sha256=row["sha256"], metric=row["metric"], step=epoch)
        paths.append(path)
    store.finish(Outcome(claim.job_id, claim.attempt, "succeeded"))
    return ctx, paths


def test_sync_copies_verified_and_is_idempotent(tmp_path: Path, cli) -> None:
    rig = Rig("local", [tmp_path / "root"])
    ctx, paths = trained_job(rig, tmp_path / "scratch")
    result = cli(*rig.cli_args(), "sync")
    assert result.code == 0 and "copied 3, already synced 0" in result.out
    rows = ctx.checkpoints(kind=None)
    assert all(Path(r["synced_path"]).is_relative_to(rig.roots[0] / "checkpoints") for r in rows)
    for path in paths:
        path.unlink()  # the node's scratch is gone: the shared copies are what counts
    assert [load_verified(r)["w"][0].item() for r in sorted(rows, key=lambda r: r["step"])] == [0.0, 1.0, 2.0]
    assert "copied 0, already synced 3" in cli(*rig.cli_args(), "sync").out


def test_a_corrupted_shared_copy_is_detected_and_replaced_or_reported(tmp_path: Path, cli) -> None:
    rig = Rig("local", [tmp_path / "root"])
    ctx, paths = trained_job(rig, tmp_path / "scratch")
    cli(*rig.cli_args(), "sync")
    rows = sorted(ctx.checkpoints(kind=None), key=lambda r: r["step"])
    shared = Path(rows[0]["synced_path"])
    shared.write_bytes(shared.read_bytes()[:-3] + b"xyz")  # bit rot on the shared store
    with pytest.raises(ChecksumError):
        load_verified(rows[0])
    repaired = cli(*rig.cli_args(), "sync", "--verify")
    assert repaired.code == 1 and "shared copy" in repaired.out and "copied 1" in repaired.out
    assert load_verified(ctx.checkpoints(kind=None)[-1])["w"].shape == (4,)
    # Corrupt shared copy and a corrupt source: reported, never marked synced.
    shared.write_bytes(b"garbage")
    paths[0].write_bytes(b"also garbage")
    result = cli(*rig.cli_args(), "sync", "--verify")
    assert result.code == 1 and "source" in result.out
    row = next(r for r in ctx.checkpoints(kind=None) if r["step"] == 0)
    assert row["synced_path"] is None
    with pytest.raises(ChecksumError):
        load_verified(row)


def test_sync_reports_checkpoints_it_cannot_reach(tmp_path: Path, cli) -> None:
    rig = Rig("local", [tmp_path / "root"])
    trained_job(rig, tmp_path / "scratch", host="gpu42")
    result = cli(*rig.cli_args(), "sync")
    assert result.code == 1 and "unreachable 3" in result.out and "gpu42" in result.out


def test_sync_pulls_from_another_host_over_ssh(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints registered by host root@127.0.0.1 (the rig's loopback sshd) come over ssh."""
    monkeypatch.setenv("MEMQ_SSH_OPTIONS", _need("MEMQ_TEST_SSH_OPTS"))
    rig = Rig("local", [tmp_path / "root"])
    ctx, _ = trained_job(rig, tmp_path / "remote-node", host="root@127.0.0.1")
    assert cli(*rig.cli_args(), "sync").code == 1  # another host's files need --remote
    report = ctx.sync_checkpoints(remote=True)
    assert report.ok and len(report.copied) == 3 and all(c.endswith("(ssh)") for c in report.copied)
    assert "already synced 3" in cli(*rig.cli_args(), "sync", "--remote").out
    rows = ctx.checkpoints(kind=None)
    assert all(load_verified(r)["w"].shape == (4,) for r in rows)
