"""`memq data prepare-nsd` end to end on NSD + Algonauts trees in the real file formats.

Expectations are computed here from the raw inputs, by direct loops over mem-spec 1.1-1.8, not by
the modules under test.
"""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pytest
from PIL import Image

from jobs.data.layout import FILL_ROW, open_images, open_subject
from jobs.mem.data import MemDataset
from tests.data.nsd_fake import FakeNsd

SUBJECTS = {"subj01": 5, "subj02": 4}


def _slots(tree: FakeNsd, subject: str) -> np.ndarray:
    """[40, 12, 75] 0-based 73k id per trial slot, -1 for blank (mem-spec 1.1)."""
    row = int(subject[-2:]) - 1
    images = tree.subjectim[row, tree.masterordering - 1] - 1
    slots = np.full(tree.stimpattern.shape, -1)
    k = 0
    for session in range(slots.shape[0]):
        for run in range(slots.shape[1]):
            for slot in range(slots.shape[2]):
                if tree.stimpattern[session, run, slot]:
                    slots[session, run, slot] = images[k]
                    k += 1
    return slots


def _windows(slots: np.ndarray, n_sessions: int) -> tuple[np.ndarray, np.ndarray]:
    """Expected memory_index and the (session, run) of every trial."""
    rows, where = [], []
    for session in range(n_sessions):
        for run in range(slots.shape[1]):
            for slot in range(slots.shape[2]):
                if slots[session, run, slot] != -1:
                    rows.append([slots[session, run, t] if t >= 0 else -1 for t in range(slot - 32, slot + 1)])
                    where.append((session, run))
    return np.array(rows), np.array(where)


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-8)


def _sz(x: np.ndarray) -> np.ndarray:
    return np.concatenate([_z(block) for block in x.reshape(-1, 750)])


def _filled(x: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(x), np.nanmean(x), x)


def _expected_behavior(tree: FakeNsd, subject: str) -> np.ndarray:
    c = tree.subjects[subject].responses
    n = c["RT"].size
    rt = _filled(c["RT"])
    base = [_z(rt), _sz(rt)] + [_filled(c[k]) for k in ("BUTTON", "CHANGEMIND", "TOTAL1", "TOTAL2")]
    base += [_filled(c["ISCORRECT"]), _filled(c["ISCORRECTCURRENT"])]
    base += [(~np.isnan(c["MEMORYRECENT"])) * 1.0, (~np.isnan(c["MEMORYFIRST"])) * 1.0, c["ISOLDCURRENT"]]
    for key in ("MEMORYRECENT", "MEMORYFIRST"):
        m = c[key]
        dt = np.array([500.0 if np.isnan(m[g]) else c["TIME"][g] - c["TIME"][g - int(m[g]) - 1] for g in range(n)])
        base += [_z(np.log(1 + dt * 1440)), _sz(np.log(1 + dt * 1440))]
    for key in ("MEMORYRECENT", "MEMORYFIRST"):
        count = np.log(1 + np.where(np.isnan(c[key]), 15000, c[key]))
        base += [_z(count), _sz(count)]
    base += [(c["RUN"] - 6) / 12, (c["TRIAL"] - 30) / 60]
    base = np.stack(base, axis=1)
    p = [0, 1, 2, 11, 12, 15, 16]
    fill = FILL_ROW[:21][p]
    rows = []
    for g in range(n):
        same = np.flatnonzero(tree.masterordering == tree.masterordering[g])
        before, after = same[same < g], same[same > g]
        prev = base[before[-1]][p] if before.size else fill
        nxt = base[after[0]][p] if after.size and after[0] < n else fill
        rows.append(np.concatenate([base[g], prev, nxt]))
    return np.vstack([*rows, FILL_ROW])


def _nc(tree: FakeNsd, subject: str) -> tuple[np.ndarray, np.ndarray]:
    snr = np.concatenate(tree.subjects[subject].ncsnr)
    return np.concatenate(tree.subjects[subject].challenge), snr**2 / (snr**2 + 1 / 3)


@pytest.mark.parametrize("subject", list(SUBJECTS))
def test_memory_windows_behavior_and_splits(nsd_tree: FakeNsd, nsd_prepared: Path, subject: str) -> None:
    n_sessions = SUBJECTS[subject]
    expected, where = _windows(_slots(nsd_tree, subject), n_sessions)
    with open_subject(nsd_prepared / f"{subject}.h5") as f:
        memory_index, behavior = f.memory_index(), f.behavior()
        splits = {name: f.split(name) for name in ("train", "val1", "val2", "predict")}
        assert (f.n_sessions, f.n_beta_trials, f.space) == (n_sessions, 750 * (n_sessions - 3), "fsaverage")
    assert np.array_equal(memory_index, expected)
    firsts = np.flatnonzero(np.r_[True, np.any(np.diff(where, axis=0) != 0, axis=1)])
    assert firsts.size == 12 * n_sessions and np.all(memory_index[firsts, :32] == -1)  # windows never cross runs
    np.testing.assert_allclose(behavior, _expected_behavior(nsd_tree, subject), rtol=1e-5, atol=1e-5)

    n_train = 750 * (n_sessions - 3)
    current = memory_index[:, 32]
    images = np.unique(current[:n_train])
    state = np.random.get_state()
    np.random.seed(114514)
    np.random.shuffle(images)
    np.random.set_state(state)
    cut1, cut2 = int(0.94 * images.size), int(0.98 * images.size)
    for name, ids in (("train", images[:cut1]), ("val1", images[cut1:cut2]), ("val2", images[cut2:])):
        assert np.array_equal(splits[name], np.flatnonzero(np.isin(current[:n_train], ids)))
    assert np.array_equal(splits["predict"], np.arange(n_train, 750 * n_sessions))
    for a, b in (("train", "val1"), ("train", "val2"), ("val1", "val2")):
        assert not set(current[splits[a]]) & set(current[splits[b]])


@pytest.mark.parametrize("subject", list(SUBJECTS))
def test_voxels_coords_and_rois(nsd_tree: FakeNsd, nsd_prepared: Path, subject: str) -> None:
    challenge, nc = _nc(nsd_tree, subject)
    with open_subject(nsd_prepared / f"{subject}.h5") as f:
        vertices, coords, layout = f.voxel_indices(), f.coords(), f.challenge
        rois = {name: f.roi(name) for name in f.roi_names()}
        attrs = dict(f.file.attrs)
    n_challenge = int(challenge.sum())
    assert np.array_equal(vertices[:n_challenge], np.flatnonzero(challenge))
    assert (layout.n_challenge, layout.n_lh) == (n_challenge, int(challenge[:600].sum()))
    # the added vertices are the k highest-NC vertices outside the mask, their mean NC within 0.001 of the mask's
    added = vertices[n_challenge:]
    outside = np.where(challenge | np.isnan(nc), -np.inf, nc)
    assert set(added) == set(np.argsort(-outside)[: added.size]) and np.all(np.diff(added) > 0)
    assert abs(nc[added].mean() - nc[challenge].mean()) <= 0.001
    assert np.all(nc[added] > attrs["nc_threshold"]) and added.size > 0

    lh, rh = nsd_tree.spheres[0], nsd_tree.spheres[1].copy()
    rh[:, 0] += lh[:, 0].min() + 1.5 * np.ptp(lh[:, 0]) - rh[:, 0].min()
    np.testing.assert_allclose(coords, np.vstack([lh, rh])[vertices], rtol=1e-6)

    labels = np.concatenate(nsd_tree.subjects[subject].streams)
    for k, name in enumerate(["RSC", "E", "MV", "ML", "MP", "V", "L", "P"]):
        assert np.array_equal(rois[name], np.flatnonzero(labels == k))
    assert np.array_equal(rois["R"], np.arange(n_challenge, vertices.size))
    np.random.seed(45510)
    buffer = np.arange(vertices.size)
    for j in range(1, 11):
        np.random.shuffle(buffer)
        for i, chunk in enumerate(np.array_split(buffer, 9), start=1):
            assert np.array_equal(rois[f"r_{j}_{i}"], chunk)


@pytest.mark.parametrize("subject", list(SUBJECTS))
def test_betas_challenge_images_and_images(nsd_tree: FakeNsd, nsd_prepared: Path, subject: str) -> None:
    with open_subject(nsd_prepared / f"{subject}.h5") as f:
        betas, vertices = f.betas[()].astype(np.float64), f.voxel_indices()
        challenge_images, memory_index = f.challenge_images(), f.memory_index()
    for session in range(1, SUBJECTS[subject] - 3 + 1):
        raw = [
            np.asarray(nibabel.load(nsd_tree.betas_dir(subject) / f"{h}.betas_session{session:02d}.mgh").dataobj)
            for h in ("lh", "rh")
        ]
        data = np.concatenate(raw)[vertices, 0, 0, :].T.astype(np.float64)
        z = (data - data.mean(0)) / data.std(0)
        np.testing.assert_allclose(betas[750 * (session - 1) : 750 * session], z, atol=5e-3)
    assert challenge_images.tolist() == nsd_tree.subjects[subject].test_images
    with open_images(nsd_prepared / "images.h5") as f:
        assert set(np.unique(memory_index)) - {-1} <= set(f.ids)
        image_id = int(challenge_images[0])
        png = next((nsd_tree.alg_dir / subject / "test_split/test_images").glob(f"*_nsd-{image_id:05d}.png"))
        expected = np.asarray(Image.open(png).convert("RGB").resize((16, 16), Image.Resampling.BICUBIC))
        assert np.array_equal(f.images[np.searchsorted(f.ids, image_id)], expected.transpose(2, 0, 1))


def test_prepared_dir_checks_and_loads(nsd_prepared: Path, memq) -> None:
    ran = memq("data", "check", nsd_prepared)
    assert ran.code == 1  # the memory features are still pending
    assert "subj01.h5: ok" in ran.out and "subj02.h5: ok" in ran.out
    assert "images.h5: PROBLEM: memory features not computed yet" in ran.out
    sample = MemDataset(nsd_prepared / "subj01.h5", "val1", ["E", "R"], nsd_prepared / "images.h5")[0]
    assert sample["img"].shape == (3, 16, 16) and sample["bhv"].shape == (35,) and sample["prev_bhvs"].shape == (32, 35)


def test_complete_subjects_are_skipped(nsd_tree: FakeNsd, tmp_path: Path, memq, prepare_cmd) -> None:
    out = tmp_path / "out"
    assert memq(*prepare_cmd(nsd_tree, out, "--subjects", "2", "--no-images")).code == 0
    before = (out / "subj02.h5").stat()
    again = memq(*prepare_cmd(nsd_tree, out, "--subjects", "subj02", "--no-images"))
    assert again.code == 0 and "subj02" in again.out and "complete, skipped" in again.out
    assert (out / "subj02.h5").stat().st_mtime_ns == before.st_mtime_ns
    forced = memq(*prepare_cmd(nsd_tree, out, "--subjects", "2", "--no-images", "--force"))
    assert forced.code == 0 and (out / "subj02.h5").stat().st_ino != before.st_ino
    assert sorted(p.name for p in out.iterdir()) == ["subj02.h5"]


def test_job_kind_prepares_one_subject(nsd_tree: FakeNsd, tmp_path: Path, job_ctx) -> None:
    from jobs.data.nsd import run

    ctx = job_ctx.claim("data.prepare_nsd", nsd_dir=str(nsd_tree.nsd_dir), alg_dir=str(nsd_tree.alg_dir),
                        out=str(tmp_path / "out"), subject=2)
    run(ctx)
    out = tmp_path / "out"
    assert (out / "subj02.h5").is_file() and not (out / "subj01.h5").exists()
    assert job_ctx.progress(ctx) == {"step": "subj02 betas (sessions)", "done": 1, "total": 1}


def test_killed_run_leaves_nothing_that_passes_check(nsd_tree: FakeNsd, tmp_path: Path, memq, prepare_cmd) -> None:
    """A run killed in the middle of the betas (like SIGKILL: no cleanup) leaves only a hidden .tmp file."""
    import subprocess
    import sys

    args = [str(a) for a in prepare_cmd(nsd_tree, tmp_path, "--subjects", "1", "--no-images")]
    driver = f"""
import os, sys
import jobs.data.spaces as spaces
real = spaces._surface_betas
def dying(src, session, *rest, **options):
    if session == 2:
        os._exit(9)
    return real(src, session, *rest, **options)
spaces._surface_betas = dying
sys.argv = ["memq", *{args!r}]
from memq.cli import main
main()
"""
    assert subprocess.run([sys.executable, "-c", driver], capture_output=True).returncode == 9
    assert not (tmp_path / "subj01.h5").exists()
    assert [p.name.startswith(".subj01.h5.") and p.name.endswith(".tmp") for p in tmp_path.iterdir()] == [True]
    ran = memq("data", "check", tmp_path)
    assert ran.code == 1 and "subjXX.h5: PROBLEM: no subject file" in ran.out and "unfinished files" in ran.out
    assert memq(*prepare_cmd(nsd_tree, tmp_path, "--subjects", "1", "--no-images")).code == 0
    assert "subj01.h5: ok" in memq("data", "check", tmp_path).out
