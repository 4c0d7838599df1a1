from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import h5py
import lightning as L
import numpy as np
import pytest
import torch

from jobs.data.layout import LayoutError, open_images, open_subject
from jobs.data.synth import SynthInfo
from jobs.mem.data import MemDataModule, MemDataset, collate_by_subject

KEYS = {"img", "prev_img", "prev_feats", "bhv", "prev_bhvs", "y", "subject", "index"}
MEAN = np.array([0.485, 0.456, 0.406])[:, None, None]
STD = np.array([0.229, 0.224, 0.225])[:, None, None]


class _Raw:
    """The stored arrays of one subject, read plainly, to check samples against."""

    def __init__(self, synth: SynthInfo, subject: str = "subj01") -> None:
        with open_subject(synth.data_dir / f"{subject}.h5") as f:
            self.betas, self.behavior = f.betas[()], f.behavior()
            self.memory_index = f.memory_index()
            self.splits = {name: f.split(name) for name in ("train", "val1", "val2", "predict")}
            self.rois = {name: f.roi(name) for name in ("E", "V", "r_1_1", "r_2_1")}
        with open_images(synth.data_dir / "images.h5") as f:
            self.ids, self.images, self.features = f.ids, f.images[()], f.features[()]

    def image(self, image_id: int) -> np.ndarray:
        return self.images[np.searchsorted(self.ids, image_id)]

    def feature(self, image_id: int) -> np.ndarray:
        return self.features[np.searchsorted(self.ids, image_id)].astype(np.float32)


@pytest.fixture(scope="module")
def raw(synth: SynthInfo) -> _Raw:
    return _Raw(synth)


def _dataset(synth: SynthInfo, split: str, rois: list[str] | None = None, **kwargs) -> MemDataset:
    return MemDataset(synth.data_dir / "subj01.h5", split, rois, synth.data_dir / "images.h5", **kwargs)


def test_sample_contract(synth: SynthInfo, raw: _Raw) -> None:
    ds = _dataset(synth, "train")
    assert len(ds) == len(raw.splits["train"])
    sample = ds[5]
    g = int(raw.splits["train"][5])
    assert set(sample) == KEYS and sample["subject"] == "subj01" and sample["index"] == g
    shapes = {k: tuple(v.shape) for k, v in sample.items() if isinstance(v, torch.Tensor)}
    assert shapes == {
        "img": (3, 32, 32),
        "prev_img": (3, 32, 32),
        "prev_feats": (31, 16),
        "bhv": (35,),
        "prev_bhvs": (32, 35),
        "y": (300,),
    }
    assert all(v.dtype == torch.float32 for v in sample.values() if isinstance(v, torch.Tensor))
    expected = (raw.image(raw.memory_index[g, 32]) / 255 - MEAN) / STD
    np.testing.assert_allclose(sample["img"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(sample["bhv"].numpy(), raw.behavior[g])
    np.testing.assert_array_equal(sample["y"].numpy(), raw.betas[g].astype(np.float32))


def test_memory_frames_and_blanks(synth: SynthInfo, raw: _Raw) -> None:
    ds = _dataset(synth, "train")
    seen_blank_prev = seen_image_prev = seen_blank_feat = False
    for i in range(0, len(ds), 29):
        sample, g = ds[i], int(ds.indices[i])
        window = raw.memory_index[g]
        if window[31] == -1:
            seen_blank_prev = True
            assert torch.all(sample["prev_img"] == 0.1)  # blank T=-1: constant 0.1, not normalised
        else:
            seen_image_prev = True
            expected = (raw.image(window[31]) / 255 - MEAN) / STD
            np.testing.assert_allclose(sample["prev_img"].numpy(), expected, atol=1e-5)
        for t in range(31):  # prev_feats[t] is T = -(t + 2), memory_index entry 30 - t
            image_id = window[30 - t]
            seen_blank_feat |= image_id == -1
            expected = np.zeros(16, np.float32) if image_id == -1 else raw.feature(image_id)
            np.testing.assert_array_equal(sample["prev_feats"][t].numpy(), expected)
        k = 0
        for t in range(32):  # prev_bhvs[t] is T = -(t + 1), entry 31 - t
            if window[31 - t] == -1:
                np.testing.assert_array_equal(sample["prev_bhvs"][t].numpy(), raw.behavior[-1])  # fill row
            else:
                k += 1
                np.testing.assert_array_equal(sample["prev_bhvs"][t].numpy(), raw.behavior[g - k])
    assert seen_blank_prev and seen_image_prev and seen_blank_feat


def test_prev_bhvs_are_indexed_by_global_trial(synth: SynthInfo, raw: _Raw) -> None:
    """On val1, the reference's local indexing (split position - k) names other trials."""
    ds = _dataset(synth, "val1")
    val1 = raw.splits["val1"]
    checked = 0
    for i in range(1, len(ds)):
        g = int(val1[i])
        if raw.memory_index[g, 31] == -1 or val1[i - 1] == g - 1:
            continue
        local = raw.behavior[val1][i - 1]  # what indexing the split-subset arrays would give for T=-1
        global_ = raw.behavior[g - 1]
        assert not np.array_equal(local, global_)
        np.testing.assert_array_equal(ds[i]["prev_bhvs"][0].numpy(), global_)
        checked += 1
    assert checked > 10


def test_roi_targets_follow_roi_order(synth: SynthInfo, raw: _Raw) -> None:
    ds = _dataset(synth, "val2", ["V", "E", "V"])
    order = np.concatenate([raw.rois["V"], raw.rois["E"]])
    assert np.array_equal(ds.roi, order)
    g = int(raw.splits["val2"][3])
    np.testing.assert_array_equal(ds[3]["y"].numpy(), raw.betas[g, order].astype(np.float32))
    union = _dataset(synth, "val2", ["r_1_1", "r_2_1"]).roi
    expected = list(dict.fromkeys([*raw.rois["r_1_1"].tolist(), *raw.rois["r_2_1"].tolist()]))
    assert union.tolist() == expected and len(expected) < len(raw.rois["r_1_1"]) + len(raw.rois["r_2_1"])
    with pytest.raises(LayoutError, match="no ROI 'X1'"):
        _dataset(synth, "val2", ["X1"])
    with pytest.raises(ValueError, match="at least one ROI"):
        _dataset(synth, "val2", [])


def test_predict_samples_have_no_targets(synth: SynthInfo) -> None:
    ds = _dataset(synth, "predict")
    assert len(ds) == 750 and "y" not in ds[0] and ds[0]["index"] == 2250


def test_fewer_frames_and_resized_images(synth: SynthInfo, raw: _Raw) -> None:
    ds = _dataset(synth, "val1", n_prev_frames=6, image_size=64, limit=4)
    full = _dataset(synth, "val1")
    sample = ds[2]
    assert len(ds) == 4
    assert sample["img"].shape == (3, 64, 64) and sample["prev_img"].shape == (3, 64, 64)
    assert torch.equal(sample["prev_feats"], full[2]["prev_feats"][:5])
    assert torch.equal(sample["prev_bhvs"], full[2]["prev_bhvs"][:6])


def test_collate_by_subject(synth: SynthInfo) -> None:
    one = _dataset(synth, "val1")
    two = MemDataset(synth.data_dir / "subj02.h5", "val1", None, synth.data_dir / "images.h5")
    samples = [two[0], one[0], two[1], one[3], two[2]]
    batch = collate_by_subject(samples)
    assert list(batch) == ["subj01", "subj02"]
    assert batch["subj01"]["index"].tolist() == [one[0]["index"], one[3]["index"]]
    assert batch["subj02"]["index"].dtype == torch.long and len(batch["subj02"]["index"]) == 3
    assert batch["subj01"]["y"].shape == (2, 300) and batch["subj02"]["y"].shape == (3, 240)
    assert batch["subj02"]["prev_feats"].shape == (3, 31, 16) and "subject" not in batch["subj01"]
    assert torch.equal(batch["subj02"]["img"][1], two[1]["img"])


def test_datamodule_over_two_subjects(synth: SynthInfo) -> None:
    dm = MemDataModule(synth.data_dir, batch_size=16, limit=40)
    info = dm.subject_info()
    assert list(info) == ["subj01", "subj02"]
    assert info["subj01"].coords.shape == (300, 3) and info["subj02"].n_voxels == 240 and info["subj02"].voxels is None
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(len(b[s]["index"]) for b in batches for s in b) == 80
    assert any(len(b) == 2 for b in batches)  # shuffled: subjects mixed in a batch
    assert {s: b[s]["y"].shape[1] for b in batches for s in b} == {"subj01": 300, "subj02": 240}
    dm.setup("test")
    val = [s for b in dm.val_dataloader() for s in b for _ in b[s]["index"]]
    assert val == ["subj01"] * 40 + ["subj02"] * 40  # not shuffled
    test_indices = [b["subj01"]["index"] for b in dm.test_dataloader() if "subj01" in b]
    with open_subject(synth.data_dir / "subj01.h5") as f:
        assert torch.cat(test_indices).tolist() == f.split("val2")[:40].tolist()
    predict = next(iter(dm.predict_dataloader()))
    assert "y" not in predict["subj01"]


def test_datamodule_roi_subset_and_subject_choice(synth: SynthInfo, raw: _Raw) -> None:
    dm = MemDataModule(synth.data_dir, subjects=["subj02"], rois=["E", "V"], batch_size=4, limit=4)
    assert dm.subjects == ["subj02"]
    with open_subject(synth.data_dir / "subj02.h5") as f:
        expected = np.concatenate([f.roi("E"), f.roi("V")])
    info = dm.subject_info()["subj02"]
    assert np.array_equal(info.voxels, expected) and info.coords.shape == (240, 3)
    batch = next(iter(dm.val_dataloader()))
    assert batch["subj02"]["y"].shape == (4, expected.size)
    with pytest.raises(LayoutError, match="no subject file for subj09; found subj01, subj02"):
        MemDataModule(synth.data_dir, subjects=["subj09"])


def test_datamodule_gives_each_rois_columns(synth: SynthInfo) -> None:
    """Overlapping ROIs: each ROI's columns pick exactly its voxels out of the modelled union."""
    rois = ["r_1_1", "r_2_1"]
    dm = MemDataModule(synth.data_dir, rois=rois, limit=2)
    columns = dm.roi_columns()
    assert list(columns) == dm.subjects == ["subj01", "subj02"]
    for subject, info in dm.subject_info().items():
        with open_subject(synth.data_dir / f"{subject}.h5") as f:
            for name in rois:
                assert columns[subject][name].dtype == torch.int64
                assert np.array_equal(info.voxels[columns[subject][name].numpy()], f.roi(name))
    assert MemDataModule(synth.data_dir, limit=2).roi_columns() == {}


def test_subjects_without_roi_voxels_are_left_out(synth: SynthInfo, tmp_path: Path) -> None:
    for name in ("subj01.h5", "subj02.h5", "images.h5"):
        shutil.copy(synth.data_dir / name, tmp_path / name)
    with h5py.File(tmp_path / "subj01.h5", "a") as f:
        f.create_dataset("rois/w_1_empty", data=np.zeros(0, np.int64))
    with h5py.File(tmp_path / "subj02.h5", "a") as f:
        f.create_dataset("rois/w_1_empty", data=np.array([4, 2]))
    dm = MemDataModule(tmp_path, rois=["w_1_empty"], limit=2)
    assert dm.subjects == ["subj02"] and dm.subject_info()["subj02"].voxels.tolist() == [4, 2]
    with h5py.File(tmp_path / "subj02.h5", "a") as f:
        del f["rois/w_1_empty"]
        f.create_dataset("rois/w_1_empty", data=np.zeros(0, np.int64))
    with pytest.raises(LayoutError, match="hold no voxels in any subject"):
        MemDataModule(tmp_path, rois=["w_1_empty"])


def test_workers_and_pickling(synth: SynthInfo) -> None:
    ds = _dataset(synth, "val1", limit=12)
    first = ds[0]  # opens handles in this process
    clone = pickle.loads(pickle.dumps(ds))  # what a spawn worker receives
    assert clone._handles is None and torch.equal(clone[0]["img"], first["img"])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_by_subject)
    indices = torch.cat([b["subj01"]["index"] for b in loader])
    assert indices.tolist() == ds.indices.tolist()


class _PerSubjectMean(L.LightningModule):
    """Just enough of a model to run Lightning over the nested batches."""

    def __init__(self, subjects: dict[str, int]) -> None:
        super().__init__()
        self.heads = torch.nn.ModuleDict({s: torch.nn.Linear(35, n) for s, n in subjects.items()})

    def training_step(self, batch: dict[str, dict[str, torch.Tensor]], _: int) -> torch.Tensor:
        return sum(torch.nn.functional.mse_loss(self.heads[s](b["bhv"]), b["y"]) for s, b in batch.items())

    def validation_step(self, batch: dict[str, dict[str, torch.Tensor]], _: int) -> None:
        self.log("val", self.training_step(batch, 0), batch_size=sum(len(b["index"]) for b in batch.values()))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_runs_on_the_datamodule(synth: SynthInfo, tmp_path: Path) -> None:
    dm = MemDataModule(synth.data_dir, batch_size=8, limit=16)
    model = _PerSubjectMean({s: i.n_voxels for s, i in dm.subject_info().items()})
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 4 and "val" in trainer.callback_metrics
