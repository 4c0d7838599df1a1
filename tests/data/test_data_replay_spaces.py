"""`memq data prepare-nsd --space func1mm_hip | fship [--beta b2]`: the memory-replay spaces.

Expectations come from the fake tree's raw files read here with nibabel and NumPy, voxel by voxel,
following the reference's preparation (thalamus | MTL voxels of func1mm; fship = every fsaverage
vertex, then those voxels), not from the modules under test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import nibabel
import numpy as np
import pytest
from nibabel.freesurfer import read_geometry

from jobs.data.hcp import AREA_CORTEX, CORTICES
from jobs.data.layout import list_subjects, open_subject, subject_path
from tests.data.nsd_fake import FakeNsd, write_fake_nsd

VOLUME = (7, 8, 6)
N_VERTICES = 50  # per hemisphere
THALAMUS = ["LGN", "SC", "Vpu", "DLpu", "DMpu"]
MTL = ["ErC", "area35", "area36", "PhC", "Sub", "CA1", "CA2", "CA3", "DG", "HT"]
BETA_DIRS = {"b3": "betas_fithrf_GLMdenoise_RR", "b2": "betas_fithrf"}


@pytest.fixture(scope="module")
def volume_tree(tmp_path_factory: pytest.TempPathFactory) -> FakeNsd:
    """subj01 with 5 sessions (2 with betas) in both beta versions, func1mm volumes included."""
    return write_fake_nsd(
        tmp_path_factory.mktemp("vtree"), {"subj01": 5}, n_vertices=N_VERTICES, image_size=4,
        volume=VOLUME, beta_dirs=tuple(BETA_DIRS.values()),
    )  # fmt: skip


@pytest.fixture(scope="module")
def prepared(volume_tree: FakeNsd, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """The tree prepared in one directory, one space and beta version at a time, on first use."""
    from tests.data.conftest import prepare_args, run_memq

    out = tmp_path_factory.mktemp("spaces")

    def _prepare(space: str, beta: str) -> Path:
        name = space if beta == "b3" else f"{space}_{beta}"
        if not subject_path(out, "subj01", name).is_file():
            ran = run_memq(*prepare_args(volume_tree, out, "--space", space, "--beta", beta, "--no-images"))
            assert ran.code == 0, ran.err
        return subject_path(out, "subj01", name)

    return _prepare


def _expected_hippocampus(tree: FakeNsd) -> tuple[np.ndarray, dict[str, list[int]]]:
    """(i, j, k) of the selected voxels in C order, and each ROI's positions among them."""
    thalamus = nibabel.load(tree.func1mm_roi("subj01", "thalamus")).get_fdata()
    mtl = nibabel.load(tree.func1mm_roi("subj01", "MTL")).get_fdata()
    offset = int(thalamus.max())
    ijk, rois = [], {name: [] for name in THALAMUS + MTL}
    for i in range(VOLUME[0]):
        for j in range(VOLUME[1]):
            for k in range(VOLUME[2]):
                t, m = thalamus[i, j, k], mtl[i, j, k]
                if t > 0 or m > 0:
                    label = int(t + (m + offset if m != 0 else 0))
                    rois[(THALAMUS + MTL)[label - 1]].append(len(ijk))
                    ijk.append((i, j, k))
    for name, parts in (("HHHB", MTL[4:9]), ("H", ["HHHB", "HT"]), ("PrC", MTL[1:3]), ("pulvinar", THALAMUS[2:])):
        rois[name] = [p for part in parts for p in rois[part]]
    return np.array(ijk), rois


def _expected_hcp(tree: FakeNsd) -> dict[str, list[int]]:
    """The 22 HCP cortices and their 5 groups, vertex by vertex (areas 1..177 carry a cortex)."""
    areas = np.concatenate([nibabel.load(tree.surface_label(h, "HCP_MMP1")).get_fdata().ravel() for h in ("lh", "rh")])
    rois: dict[str, list[int]] = {name: [] for name in CORTICES}
    for vertex, label in enumerate(areas.astype(int)):
        area = label - 180 if label > 180 else label
        if 1 <= area <= len(AREA_CORTEX):
            rois[CORTICES[AREA_CORTEX[area - 1] - 1]].append(vertex)
    for group, first, last in (("Visual", 0, 5), ("Somatomotor", 5, 9), ("Auditory", 9, 14), ("Posterior", 14, 18),
                               ("Anterior", 18, 22)):  # fmt: skip
        rois[group] = sorted(v for name in CORTICES[first:last] for v in rois[name])
    return rois


def _z(data: np.ndarray) -> np.ndarray:
    """[750, n] z-scored per column (NaN -> 0; constant columns 0)."""
    data = np.nan_to_num(data.astype(np.float64))
    return (data - data.mean(0)) / (data.std(0) + 1e-8)


def _volume_betas(tree: FakeNsd, beta: str, session: int, ijk: np.ndarray) -> np.ndarray:
    path = tree.betas_dir("subj01", BETA_DIRS[beta], "func1mm") / f"betas_session{session:02d}.nii.gz"
    volume = nibabel.load(path).get_fdata()
    return _z(np.stack([volume[i, j, k, :] for i, j, k in ijk], axis=1))


def _surface_betas(tree: FakeNsd, beta: str, session: int) -> np.ndarray:
    files = [tree.betas_dir("subj01", BETA_DIRS[beta]) / f"{h}.betas_session{session:02d}.mgh" for h in ("lh", "rh")]
    return _z(np.concatenate([nibabel.load(f).get_fdata()[:, 0, 0, :] for f in files]).T)


def test_func1mm_hip(volume_tree: FakeNsd, prepared: Callable[[str, str], Path]) -> None:
    ijk, rois = _expected_hippocampus(volume_tree)
    with open_subject(prepared("func1mm_hip", "b3")) as f:
        assert f.file.attrs["space"] == "func1mm_hip" and f.file.attrs["beta"] == "b3"
        assert f.n_voxels == len(ijk) > 0 and f.challenge is None
        np.testing.assert_array_equal(f.coords(), ijk)
        flat = [(i * VOLUME[1] + j) * VOLUME[2] + k for i, j, k in ijk]
        np.testing.assert_array_equal(f.voxel_indices(), flat)
        assert sorted(f.roi_names()) == sorted(rois)
        for name, positions in rois.items():
            np.testing.assert_array_equal(f.roi(name), positions, err_msg=name)
        betas = f.betas[()].astype(np.float64)
    assert betas.shape == (2 * 750, len(ijk))
    for session in (1, 2):
        expected = _volume_betas(volume_tree, "b3", session, ijk)
        np.testing.assert_allclose(betas[750 * (session - 1) : 750 * session], expected, atol=5e-3)


def test_fship_b2(volume_tree: FakeNsd, prepared: Callable[[str, str], Path]) -> None:
    ijk, rois = _expected_hippocampus(volume_tree)
    n_surface = 2 * N_VERTICES
    path = prepared("fship", "b2")
    assert path.name == "subj01.fship_b2.h5"
    assert list_subjects(path.parent, "fship_b2") == ["subj01"] and list_subjects(path.parent) == []
    lh, rh = (read_geometry(str(volume_tree.nsd_dir / f"nsddata/freesurfer/fsaverage/surf/{h}.sphere"))[0]
              for h in ("lh", "rh"))  # fmt: skip
    rh[:, 0] += lh[:, 0].min() + 1.5 * np.ptp(lh[:, 0]) - rh[:, 0].min()
    spheres = np.vstack([lh, rh]).astype(np.float32)
    hip = ijk.astype(np.float64)
    hip[:, 0] += int(spheres[:, 0].max()) - hip[:, 0].min() + 1
    labels = [nibabel.load(volume_tree.nsdgeneral(h)).get_fdata().ravel() for h in ("lh", "rh")]
    with open_subject(path) as f:
        assert f.file.attrs["space"] == "fship" and f.file.attrs["beta"] == "b2"
        assert f.n_voxels == n_surface + len(ijk)
        flat = [(i * VOLUME[1] + j) * VOLUME[2] + k for i, j, k in ijk]
        np.testing.assert_array_equal(f.voxel_indices(), [*range(n_surface), *(n_surface + np.array(flat))])
        np.testing.assert_allclose(f.coords(), np.vstack([spheres, hip]), rtol=1e-6)
        np.testing.assert_array_equal(f.roi("nsdgeneral"), np.flatnonzero(np.concatenate(labels) == 1))
        for name, vertices in _expected_hcp(volume_tree).items():
            np.testing.assert_array_equal(f.roi(name), vertices, err_msg=name)
        for name, positions in rois.items():
            np.testing.assert_array_equal(f.roi(name), np.array(positions, dtype=int) + n_surface, err_msg=name)
        betas = f.betas[()].astype(np.float64)
    for session in (1, 2):
        surface = _surface_betas(volume_tree, "b2", session)
        expected = np.hstack([surface, _volume_betas(volume_tree, "b2", session, ijk)])
        np.testing.assert_allclose(betas[750 * (session - 1) : 750 * session], expected, atol=5e-3)
    # b2 and b3 are different files, and different betas
    with open_subject(prepared("fship", "b3")) as f:
        assert not np.allclose(f.betas[:750].astype(np.float64), betas[:750], atol=0.1)


def test_check_and_images_cover_every_space(volume_tree: FakeNsd, prepared: Callable[[str, str], Path]) -> None:
    """`memq data check` reports the files of every space; images.h5 holds what their memory windows show."""
    from tests.data.conftest import prepare_args, run_memq

    out = prepared("func1mm_hip", "b3").parent
    prepared("fship", "b2")
    assert run_memq(*prepare_args(volume_tree, out, "--space", "fship", "--image-size", "8")).code == 0
    ran = run_memq("data", "check", out)
    for name in ("subj01.func1mm_hip.h5", "subj01.fship.h5", "subj01.fship_b2.h5"):
        assert f"{name}: ok" in ran.out, ran.out
    with open_subject(subject_path(out, "subj01", "fship")) as f:
        shown = np.unique(f.memory_index())
    with h5py.File(out / "images.h5") as f:
        np.testing.assert_array_equal(f["ids"][()], shown[shown != -1])


def test_unknown_space_is_one_line(volume_tree: FakeNsd, tmp_path: Path) -> None:
    from tests.data.conftest import prepare_args, run_memq

    ran = run_memq(*prepare_args(volume_tree, tmp_path / "out", "--space", "func1pt8mm", "--no-images"))
    assert ran.code == 2 and len(ran.err.strip().splitlines()) == 1, ran.err
    assert "fsaverage, func1mm_hip, fship" in ran.err and not (tmp_path / "out").exists()


def test_missing_func1mm_files_are_one_line(tmp_path: Path) -> None:
    """A tree without the func1mm files: both spaces that read them stop at the first, naming it."""
    from tests.data.conftest import prepare_args, run_memq

    tree = write_fake_nsd(tmp_path / "tree", {"subj01": 4}, n_vertices=20, images=False)
    for space in ("func1mm_hip", "fship"):
        ran = run_memq(*prepare_args(tree, tmp_path / "out", "--space", space, "--no-images"))
        assert ran.code == 2 and len(ran.err.strip().splitlines()) == 1, ran.err
        assert "func1mm/roi/thalamus.nii.gz: missing NSD func1mm thalamus labels" in ran.err
    assert not (tmp_path / "out").exists()

