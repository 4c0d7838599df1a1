"""Shared fixtures: one default synthetic dataset per test session, a tiny hand-made subject, fake
NSD + Algonauts trees in the real file formats, and `memq` run in-process for session fixtures."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from jobs.data.layout import FILL_ROW, N_SLOTS, ChallengeLayout, SubjectMeta
from jobs.data.memory import memory_index_from_design
from jobs.data.rois import random_rois
from jobs.data.splits import split_trials
from jobs.data.synth import SynthInfo, synthesize
from jobs.data.synth_subject import trial_design
from memq.context import JobContext
from memq.options import RootOptions
from memq.root import open_store
from memq.spec import GridSpec, GroupSpec, JobSpec
from memq.store.types import Capacity
from memq.testing import claim_context
from tests.data.nsd_fake import FakeNsd, write_fake_nsd


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthInfo:
    return synthesize(tmp_path_factory.mktemp("synth"))


def _tiny_meta(n_sessions: int = 2, n_voxels: int = 12, subject: str = "subj01") -> SubjectMeta:
    rng = np.random.default_rng(0)
    design = trial_design(rng, np.arange(5000, 5600), n_sessions, repeats=3)
    memory_index = memory_index_from_design(design)
    n_trials = memory_index.shape[0]
    return SubjectMeta(
        subject=subject,
        space="synthetic",
        behavior=np.vstack([rng.standard_normal((n_trials, 35)), FILL_ROW]),
        memory_index=memory_index,
        splits=split_trials(memory_index[:, N_SLOTS - 1], 1),
        coords=rng.standard_normal((n_voxels, 3)),
        voxel_indices=np.arange(100, 100 + n_voxels),
        rois={"E": np.array([3, 1, 2]), "R": np.array([], dtype=np.int64), **random_rois(n_voxels)},
        n_beta_trials=750,
        challenge=ChallengeLayout(n_voxels - 2, 4, n_voxels - 6),
        attrs={"note": "tiny"},
    )


@pytest.fixture
def tiny_meta() -> Callable[..., SubjectMeta]:
    """Factory of valid subjects with one training session, the rest predict (fresh arrays each call)."""
    return _tiny_meta


class Ran(NamedTuple):
    code: int
    out: str
    err: str


def run_memq(*args: object) -> Ran:
    """`memq ARGS...` through the real entry point, in this process (usable at any fixture scope)."""
    from memq.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setattr(sys, "argv", ["memq", *map(str, args)])
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Ran(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def memq() -> Callable[..., Ran]:
    return run_memq


N_VERTICES = 600  # per hemisphere; fsaverage has 163,842


@pytest.fixture(scope="session")
def nsd_tree(tmp_path_factory: pytest.TempPathFactory) -> FakeNsd:
    """subj01 with 5 sessions (2 with betas), subj02 with 4 (1 with betas)."""
    return write_fake_nsd(tmp_path_factory.mktemp("trees"), {"subj01": 5, "subj02": 4}, n_vertices=N_VERTICES)


def prepare_args(tree: FakeNsd, out: Path, *more: object) -> list[object]:
    return ["data", "prepare-nsd", "--nsd-dir", tree.nsd_dir, "--alg-dir", tree.alg_dir, "--out", out, *more]


@pytest.fixture(scope="session")
def prepare_cmd() -> Callable[..., list[object]]:
    """Arguments of `memq data prepare-nsd` for a tree and an output directory (plus options)."""
    return prepare_args


@pytest.fixture(scope="session")
def nsd_prepared(nsd_tree: FakeNsd, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tree prepared through the CLI once (images 16 x 16, features pending). Do not modify."""
    out = tmp_path_factory.mktemp("prepared")
    ran = run_memq(*prepare_args(nsd_tree, out, "--image-size", 16))
    assert ran.code == 0, ran.err
    return out


class DataJobs:
    """Attempts of data job kinds claimed from a real SQLite queue, as a worker claims them: the
    JobContext is memq's own (memq.testing.claim_context), progress lands in the job's record."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "queue-root"
        self.store = open_store(RootOptions(root=str(self.root), db_mode="local"), create=True)
        self.worker = self.store.register_worker("w", socket.gethostname(), os.getpid(), "boot", [], 1, 600.0)
        self.scratch = tmp / "queue-scratch"
        self.n = 0

    def claim(self, kind: str, **params: object) -> JobContext:
        self.n += 1
        group = f"g{self.n}"  # a new job each time
        self.store.submit(GridSpec("data", (GroupSpec(group),), (JobSpec("data", group, kind, dict(params)),)))
        ctx = claim_context(self.store, self.worker, Capacity(slots=1), self.scratch)
        assert ctx is not None and ctx.kind == kind
        return ctx

    def progress(self, ctx: JobContext) -> dict[str, object]:
        """The progress the attempt last reported, as `memq status` shows it."""
        return self.store.jobs(ids=[ctx.job_id])[0]["progress"]


@pytest.fixture
def job_ctx(tmp_path: Path) -> DataJobs:
    return DataJobs(tmp_path)
