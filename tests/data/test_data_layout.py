from __future__ import annotations

import ast
from pathlib import Path

import h5py
import numpy as np
import pytest

from jobs.data import layout
from jobs.data.layout import (
    FILL_ROW,
    ChallengeLayout,
    LayoutError,
    SubjectMeta,
    SubjectWriter,
    list_subjects,
    open_images,
    open_subject,
    write_images,
    write_subject,
)
from memq.errors import UserError


def _write_tiny(path: Path, meta: SubjectMeta) -> np.ndarray:
    betas = np.random.default_rng(1).standard_normal((750, meta.coords.shape[0])).astype(np.float16)
    write_subject(path, meta, betas)
    return betas


def test_format_doc_is_the_module_docstring() -> None:
    doc = ast.get_docstring(ast.parse(Path(layout.__file__).read_text()), clean=False)
    assert doc.strip() == (Path(layout.__file__).parent / "FORMAT.md").read_text().strip()


def test_fill_row_is_spec_fill_plus_repeat_columns_twice() -> None:
    base = [0, 0, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert FILL_ROW.tolist() == base + [0, 0, -1, 0, 0, 0, 0] * 2
    assert FILL_ROW.dtype == np.float32 and not FILL_ROW.flags.writeable


def test_subject_roundtrip(tmp_path: Path, tiny_meta) -> None:
    meta = tiny_meta()
    betas = _write_tiny(tmp_path / "subj01.h5", meta)
    with open_subject(tmp_path / "subj01.h5") as f:
        assert (f.subject, f.space, f.n_sessions, f.n_trials, f.n_voxels, f.n_beta_trials) == (
            "subj01",
            "synthetic",
            2,
            1500,
            12,
            750,
        )
        np.testing.assert_array_equal(f.betas[()], betas)
        np.testing.assert_array_equal(f.behavior(), meta.behavior.astype(np.float32))
        np.testing.assert_array_equal(f.memory_index(), meta.memory_index)
        np.testing.assert_allclose(f.coords(), meta.coords.astype(np.float32))
        np.testing.assert_array_equal(f.voxel_indices(), meta.voxel_indices)
        for name in layout.SPLITS:
            np.testing.assert_array_equal(f.split(name), meta.splits[name])
        assert f.roi("E").tolist() == [3, 1, 2]  # ROI order is kept
        assert f.roi("R").shape == (0,)
        assert set(f.roi_names()) == set(meta.rois)
        assert f.challenge == ChallengeLayout(10, 4, 6)
        assert f.challenge_images() is None
        assert f.file.attrs["note"] == "tiny"
        assert f.betas.chunks == (1, 12)
        assert f.file["memory_index"].dtype == np.int32 and f.file["betas"].dtype == np.float16


def test_images_roundtrip_and_id_lookup(tmp_path: Path) -> None:
    ids = np.array([3, 10, 72999])
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    features = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_images(tmp_path / "images.h5", ids, images, features)
    with open_images(tmp_path / "images.h5") as f:
        assert (f.image_size, f.feature_dim) == (8, 4)
        np.testing.assert_array_equal(f.images[()], images)
        np.testing.assert_array_equal(f.features[()], features.astype(np.float16))
        assert f.rows(np.array([[72999, -1], [3, 10]])).tolist() == [[2, -1], [0, 1]]
        with pytest.raises(LayoutError, match=r"images\.h5: 1 image ids are not stored, e\.g\. \[11\]"):
            f.rows(np.array([3, 11]))


def test_list_subjects_ignores_temporary_files(tmp_path: Path, tiny_meta) -> None:
    _write_tiny(tmp_path / "subj02.h5", tiny_meta())
    _write_tiny(tmp_path / "subj01.h5", tiny_meta())
    (tmp_path / ".subj03.h5.123.abcd.tmp").touch()
    (tmp_path / "images.h5").touch()
    assert list_subjects(tmp_path) == ["subj01", "subj02"]


def test_failed_write_leaves_nothing(tmp_path: Path, tiny_meta) -> None:
    path = tmp_path / "subj01.h5"
    with pytest.raises(RuntimeError), SubjectWriter(path, tiny_meta()) as writer:
        writer.append_betas(np.zeros((100, 12)))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_betas_are_refused(tmp_path: Path, tiny_meta) -> None:
    with (
        pytest.raises(LayoutError, match="only 100 of 750 betas rows written"),
        SubjectWriter(tmp_path / "subj01.h5", tiny_meta()) as writer,
    ):
        writer.append_betas(np.zeros((100, 12)))
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_arrays(tmp_path: Path, tiny_meta) -> None:
    meta = tiny_meta()
    meta.behavior = meta.behavior[:-1]
    with pytest.raises(LayoutError, match=r"'behavior' is float32 \[1500, 35\], expected float32 \[1501, 35\]"):
        SubjectWriter(tmp_path / "subj01.h5", meta)
    meta = tiny_meta()
    meta.behavior[-1] = 0
    with pytest.raises(LayoutError, match="fill row"):
        SubjectWriter(tmp_path / "subj01.h5", meta)
    meta = tiny_meta()
    meta.splits = {**meta.splits, "val1": np.array([5, 900])}  # 900 has no betas
    with pytest.raises(LayoutError, match=r"split 'val1' holds indices outside \[0, 750\)"):
        SubjectWriter(tmp_path / "subj01.h5", meta)
    meta = tiny_meta()
    meta.rois = {"E": np.array([1, 1])}
    with pytest.raises(LayoutError, match="ROI 'E' holds repeated indices"):
        SubjectWriter(tmp_path / "subj01.h5", meta)
    writer = SubjectWriter(tmp_path / "subj01.h5", tiny_meta())
    with pytest.raises(LayoutError, match=r"betas block \[751, 12\] does not fit at row 0 of 750 betas rows"):
        writer.append_betas(np.zeros((751, 12)))
    writer.abort()
    assert not (tmp_path / "subj01.h5").exists()


def test_missing_and_foreign_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match=r"subj09\.h5: no such file"):
        open_subject(tmp_path / "subj09.h5")
    (tmp_path / "subj01.h5").write_text("not hdf5")
    with pytest.raises(LayoutError, match=r"subj01\.h5: not a readable HDF5 file"):
        open_subject(tmp_path / "subj01.h5")
    with pytest.raises(LayoutError) as info:
        open_images(tmp_path / "images.h5")
    err = info.value
    assert isinstance(err, UserError) and err.line().startswith(f"error: {tmp_path / 'images.h5'}: no such file")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.attrs.__setitem__("format", "other"), "format attribute is 'other', expected 'memq.subject'"),
        (lambda f: f.attrs.__setitem__("format_version", 2), "format version 2; this reader understands 1"),
        (
            lambda f: f.attrs.__setitem__("n_voxels", 13),
            r"dataset 'betas' is float16 \[750, 12\], expected float16 \[750, 13\]",
        ),
        (lambda f: f.attrs.__setitem__("n_trials", 1499), "n_trials=1499 != 750 \\* n_sessions=2"),
        (lambda f: f.__delitem__("coords"), r"missing dataset 'coords' \(expected float32 \[12, 3\]\)"),
        (lambda f: f.__delitem__("splits/val2"), "missing dataset 'splits/val2'"),
        (
            lambda f: (f.__delitem__("betas"), f.create_dataset("betas", data=np.zeros((700, 12), np.float16))),
            "700 betas rows: not whole sessions",
        ),
        (
            lambda f: (
                f.__delitem__("memory_index"),
                f.create_dataset("memory_index", data=np.zeros((1500, 32), np.int32)),
            ),
            r"dataset 'memory_index' is int32 \[1500, 32\], expected int32 \[1500, 33\]",
        ),
        (
            lambda f: (f.__delitem__("betas"), f.create_dataset("betas", data=np.zeros((750, 12), np.float32))),
            r"dataset 'betas' is float32 \[750, 12\], expected float16 \[750, 12\]",
        ),
    ],
)
def test_reader_validation(tmp_path: Path, tiny_meta, edit, message: str) -> None:
    path = tmp_path / "subj01.h5"
    _write_tiny(path, tiny_meta())
    with h5py.File(path, "a") as f:
        edit(f)
    with pytest.raises(LayoutError, match=rf"subj01\.h5: {message}"):
        open_subject(path)


def test_reader_validates_splits_and_rois_on_access(tmp_path: Path, tiny_meta) -> None:
    path = tmp_path / "subj01.h5"
    _write_tiny(path, tiny_meta())
    with h5py.File(path, "a") as f:
        del f["splits/train"], f["rois/E"]
        f["splits/train"] = np.array([5, 3])
        f["rois/E"] = np.array([0, 12])
    with open_subject(path) as f:
        with pytest.raises(LayoutError, match="split 'train' must be sorted"):
            f.split("train")
        with pytest.raises(LayoutError, match=r"ROI 'E' holds indices outside \[0, 12\)"):
            f.roi("E")
        with pytest.raises(LayoutError, match="no ROI 'w_1'; ROIs here: E, R, r_10_1"):
            f.roi("w_1")
        with pytest.raises(LayoutError, match="unknown split 'test'"):
            f.split("test")


def test_image_reader_validation(tmp_path: Path) -> None:
    path = tmp_path / "images.h5"
    write_images(path, np.array([1, 2]), np.zeros((2, 3, 4, 4), np.uint8), np.zeros((2, 5)))
    with h5py.File(path, "a") as f:
        f.attrs["image_size"] = 8
    with pytest.raises(LayoutError, match=r"'images' is uint8 \[2, 3, 4, 4\], expected uint8 \[2, 3, 8, 8\]"):
        open_images(path)
    with pytest.raises(LayoutError, match="sorted, unique"):
        write_images(path, np.array([2, 1]), np.zeros((2, 3, 4, 4), np.uint8), np.zeros((2, 5)))
    with pytest.raises(LayoutError, match=r"block of images float64 \[2, 3, 4, 4\] and features \[2, 5\] does not fit"):
        write_images(tmp_path / "other.h5", np.array([1, 2]), np.zeros((2, 3, 4, 4)), np.zeros((2, 5)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.h5"]
