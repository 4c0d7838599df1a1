"""Samples, batches and the LightningDataModule that feed the Mem model (mem-spec 1.9).

A sample is one trial g of one subject, read from the prepared layout (``jobs/data/FORMAT.md``)
with at most three HDF5 reads: one betas row and the T=0 and T=-1 images. Behaviour, the memory
table and the memory features the split needs (about 20 MB for a real subject) are read once, in
bulk, when the dataset is built: 31 scattered feature reads per sample are what made the
reference slow on NFS. HDF5 files are opened lazily in the process that reads, so DataLoader
workers (fork or spawn) each get their own handles.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset

from jobs.data.layout import (
    BLANK,
    DEFAULT_SPACE,
    IMAGES_FILE,
    N_PREV,
    N_SLOTS,
    ImageFile,
    LayoutError,
    PathArg,
    SubjectFile,
    list_subjects,
    open_images,
    open_subject,
    subject_path,
)
from jobs.data.memory import local_prev_behavior_rows, prev_behavior_rows, reference_shuffle
from jobs.mem.dark import TeacherRows, read_teacher
from jobs.mem.ensemble.artifacts import SubjectPrediction
from jobs.mem.subject import SubjectInfo

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
BLANK_PIXEL = 0.1  # a blank T=-1 slot is this constant image, not normalised (mem-spec 1.3)
CURRENT, PREVIOUS = N_SLOTS - 1, N_SLOTS - 2  # memory_index entries of T=0 and T=-1
VAL_SUBSET_SEED = 0
STAGE_SPLITS = {"fit": ("train", "val1"), "validate": ("val1",), "test": ("val2",), "predict": ("predict",)}


def roi_union(positions: Sequence[np.ndarray]) -> np.ndarray:
    """The union of ROIs' voxel positions in the order given (ROI file order, first occurrence kept)."""
    if not positions:
        raise ValueError("rois must name at least one ROI (None selects the whole brain)")
    concatenated = np.concatenate(positions)
    _, first = np.unique(concatenated, return_index=True)
    return concatenated[np.sort(first)]


def roi_positions(subject: SubjectFile, rois: Sequence[str] | None) -> np.ndarray | None:
    """Voxel positions of the union of ``rois`` in the order listed (ROI file order, first
    occurrence kept); None means the whole brain."""
    return None if rois is None else roi_union([subject.roi(name) for name in rois])


def read_subject_info(subject: SubjectFile, rois: Sequence[str] | None) -> SubjectInfo | None:
    """What a model of ``rois`` (None: the whole brain) knows of ``subject``; None if the ROIs hold
    none of its voxels. Each ROI is read once: it gives both the modelled voxels and the ROI columns."""
    if rois is None:
        return SubjectInfo(subject.coords())
    positions = {name: subject.roi(name) for name in rois}
    voxels = roi_union(list(positions.values()))
    if not voxels.size:
        return None
    order = np.argsort(voxels)
    columns = {name: order[np.searchsorted(voxels, p, sorter=order)] for name, p in positions.items() if p.size}
    return SubjectInfo(subject.coords(), voxels, columns)


class _Handles(NamedTuple):
    subject: SubjectFile
    images: ImageFile


class MemDataset(Dataset[dict[str, Any]]):
    """The trials of one subject's split as model samples.

    Keys: ``img`` [3,H,W] (ImageNet-normalised), ``prev_img`` [3,H,W] (T=-1, blank -> 0.1),
    ``prev_feats`` [n_prev_frames-1, F] (T=-2, -3, ...; blank -> 0), ``bhv`` [35], ``prev_bhvs``
    [n_prev_frames, 35] (T=-1, -2, ...; by global trial, blank -> fill row), ``y`` [n_roi_voxels]
    (not for the predict split), ``subject``, ``index`` (global trial g). ``limit`` keeps the
    first trials of the split; ``image_size`` resizes images stored at another size.
    ``prev_bhvs`` "local" takes the reference's rows instead (switch PREV_BHVS, mem-spec 1.5).
    With ``teacher`` (its predictions of this split), ``dark`` [n_roi_voxels] is the teacher's
    prediction of the trial (LOSS.DARK).
    ``columns``: the behaviour columns kept, in order (None: all); without ``memory`` a sample has
    no ``prev_img``, ``prev_feats`` or ``prev_bhvs`` and no memory feature is read (ABLATION.*).
    ``t_image`` < 0 makes ``img`` the frame that many trial slots back (blank slot: the blank image,
    EXPERIMENTAL.T_IMAGE).
    """

    def __init__(
        self,
        subject_file: PathArg,
        split: str,
        rois: Sequence[str] | None,
        image_store: PathArg,
        *,
        n_prev_frames: int = N_PREV,
        image_size: int | None = None,
        limit: int | None = None,
        prev_bhvs: str = "global",
        teacher: SubjectPrediction | None = None,
        columns: Sequence[int] | None = None,
        memory: bool = True,
        t_image: int = 0,
        shuffle_seed: int | None = None,
    ) -> None:
        if not 1 <= n_prev_frames <= N_PREV:
            raise ValueError(f"n_prev_frames must be in 1..{N_PREV}, got {n_prev_frames}")
        if not -N_PREV <= t_image <= 0:
            raise ValueError(f"t_image must be in -{N_PREV}..0, got {t_image}")
        self.subject_file, self.image_store = Path(subject_file), Path(image_store)
        with open_subject(self.subject_file) as subject:
            self.subject = subject.subject
            trials = subject.split(split)
            self.indices = trials[:limit]
            behavior = subject.behavior()
            self.behavior = behavior if columns is None else behavior[:, list(columns)]
            memory_index = subject.memory_index()
            self.roi = roi_positions(subject, rois)
            self.has_targets = split != "predict"
        if prev_bhvs == "local":
            rows = local_prev_behavior_rows(memory_index, trials)[np.searchsorted(np.sort(trials), self.indices)]
        else:
            rows = prev_behavior_rows(memory_index)[self.indices]
        self.prev_bhv_rows = rows[:, :n_prev_frames]
        if shuffle_seed is not None:
            memory_index = memory_index[reference_shuffle(len(memory_index), f"{shuffle_seed}:{split}")]
        with open_images(self.image_store) as images:
            rows = images.rows(memory_index[self.indices])
            self.stored_size = images.image_size
            feat_rows = rows[:, N_SLOTS - 1 - n_prev_frames : PREVIOUS][:, ::-1]
            if not memory:  # the memory frames are not read: no features, every slot blank
                feat_rows = np.full_like(feat_rows, BLANK)
            needed = np.unique(feat_rows[feat_rows != BLANK])
            self.features = torch.from_numpy(images.feature_rows(needed))
        self.image_size = image_size or self.stored_size
        self.memory = memory
        self.img_rows, self.prev_img_rows = rows[:, CURRENT + t_image], rows[:, PREVIOUS]
        # memory features: positions in self.features, or BLANK
        self.feat_pos = np.where(feat_rows != BLANK, np.searchsorted(needed, feat_rows), BLANK)
        if np.any(rows[:, CURRENT] == BLANK):
            raise LayoutError(self.subject_file, "memory_index has a blank T=0 slot")
        try:
            self.teacher = None if teacher is None else TeacherRows.select(teacher, self.indices, self.roi)
        except ValueError as error:
            raise LayoutError(teacher.path if teacher else self.subject_file, str(error)) from None
        self._handles: _Handles | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": None, "_pid": None}

    def _open(self) -> _Handles:
        if self._handles is None or self._pid != os.getpid():
            self._handles = _Handles(open_subject(self.subject_file), open_images(self.image_store))
            self._pid = os.getpid()
        return self._handles

    def _image(self, images: ImageFile, row: int) -> Tensor:
        if row == BLANK:
            return torch.full((3, self.image_size, self.image_size), BLANK_PIXEL)
        x = torch.from_numpy(images.images[row]).float().div_(255)
        if self.image_size != self.stored_size:
            size = (self.image_size, self.image_size)
            x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        return (x - IMAGENET_MEAN) / IMAGENET_STD

    def _memory_features(self, positions: np.ndarray) -> Tensor:
        feats = torch.zeros(len(positions), self.features.shape[1])
        present = torch.from_numpy(positions != BLANK)
        feats[present] = self.features[torch.from_numpy(positions[positions != BLANK])].float()
        return feats

    def __getitem__(self, i: int) -> dict[str, Any]:
        handles = self._open()
        g = int(self.indices[i])
        sample = {
            "img": self._image(handles.images, int(self.img_rows[i])),
            "bhv": torch.from_numpy(self.behavior[g].copy()),
            "subject": self.subject,
            "index": g,
        }
        if self.memory:
            sample["prev_img"] = self._image(handles.images, int(self.prev_img_rows[i]))
            sample["prev_feats"] = self._memory_features(self.feat_pos[i])
            sample["prev_bhvs"] = torch.from_numpy(self.behavior[self.prev_bhv_rows[i]])
        if self.has_targets:
            row = handles.subject.betas[g]
            sample["y"] = torch.from_numpy((row if self.roi is None else row[self.roi]).astype(np.float32))
        if self.teacher is not None:
            sample["dark"] = torch.from_numpy(self.teacher.row(i))
        return sample


def collate_by_subject(samples: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Tensor]]:
    """Group a mixed batch by subject (sorted), stacking each field; ``index`` becomes a LongTensor.

    Subjects differ in their number of voxels; MemModel.forward_subjects takes the groups as they are.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for sample in samples:
        groups.setdefault(sample["subject"], []).append(sample)
    batches = {}
    for subject in sorted(groups):
        items = groups[subject]
        batch = {key: torch.stack([s[key] for s in items]) for key in items[0] if key not in ("subject", "index")}
        batch["index"] = torch.tensor([s["index"] for s in items], dtype=torch.long)
        batches[subject] = batch
    return batches


class RandomSubsetSampler(Sampler[int]):
    """``size`` random indices of ``range(n)``, in random order, drawn anew at every iteration
    (every epoch) from torch's global generator, which the job's seed sets."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n)[: self.size].tolist())

    def __len__(self) -> int:
        return self.size


class MemDataModule(L.LightningDataModule):
    """All subjects of a prepared-data directory: train on ``train`` (subjects mixed and shuffled),
    validate on ``val1``, test on ``val2``, predict on ``predict``.

    ``rois`` (``DATASET.ROIS``) restricts every subject's targets to the union of those ROIs'
    voxels in the order listed; subjects where that union is empty are left out.
    ``val_fraction`` < 1 validates on a fixed random subset of each subject's val1 trials: the
    same trials every epoch and every attempt, so per-voxel r stays comparable across epochs (the
    reference validated on a fresh random 25%, mem-spec 5.10: ``val_subset`` "redrawn" does that,
    a new random subset of all subjects' val1 trials every epoch). ``prev_bhvs``, ``columns``,
    ``memory``, ``t_image`` and ``shuffle_seed``: see MemDataset. ``dark`` names the teacher
    predictions (DIR/dark/<dark>/train/, jobs/mem/dark.py) that the train split's samples carry;
    they are read and verified when the train split is first built. ``space``: which prepared files
    of ``data_dir`` (DATASET.FMRI_SPACE).

    ``seed`` starts the generator of the train split's order, which only that split draws from
    and which the resume file holds (``state_dict``): a resumed run's first epoch draws the order
    the uninterrupted run drew (Lightning draws it before the epoch's hooks, where the global
    generators are set back: jobs/mem/train/randomness.py).
    """

    def __init__(
        self,
        data_dir: PathArg,
        subjects: Sequence[str] | None = None,
        rois: Sequence[str] | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        *,
        limit: int | None = None,
        n_prev_frames: int = N_PREV,
        image_size: int | None = None,
        val_fraction: float = 1.0,
        val_subset: str = "fixed",
        prev_bhvs: str = "global",
        dark: str | None = None,
        columns: Sequence[int] | None = None,
        memory: bool = True,
        space: str = DEFAULT_SPACE,
        t_image: int = 0,
        shuffle_seed: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.dark = dark
        self.train_order = torch.Generator().manual_seed(seed)
        self.data_dir, self.space = Path(data_dir), space
        self.val_fraction, self.val_subset = val_fraction, val_subset
        self.rois = list(rois) if rois is not None else None
        self.batch_size, self.num_workers = batch_size, num_workers
        self.dataset_kwargs = {
            "n_prev_frames": n_prev_frames, "image_size": image_size, "limit": limit, "prev_bhvs": prev_bhvs,
            "columns": columns, "memory": memory, "t_image": t_image, "shuffle_seed": shuffle_seed,
        }  # fmt: skip
        available = list_subjects(self.data_dir, space)
        unknown = sorted(set(subjects or ()) - set(available))
        if not available or unknown:
            missing = ", ".join(unknown) or "any subject"
            of_space = "" if space == DEFAULT_SPACE else f" of space {space} ({subject_path('', 'subjXX', space).name})"
            found = ", ".join(available) or "none"
            raise LayoutError(self.data_dir, f"no subject file{of_space} for {missing}; found {found}")
        self._info: dict[str, SubjectInfo] = {}
        for name in subjects or available:
            with open_subject(subject_path(self.data_dir, name, space)) as subject:
                info = read_subject_info(subject, self.rois)
            if info is not None:
                self._info[name] = info
        if not self._info:
            raise LayoutError(self.data_dir, f"the ROIs {self.rois} hold no voxels in any subject")
        self.subjects = list(self._info)
        self._datasets: dict[str, list[MemDataset]] = {}

    def subject_info(self) -> dict[str, SubjectInfo]:
        return dict(self._info)

    def roi_columns(self) -> dict[str, dict[str, Tensor]]:
        """Per subject, ROI name -> the ROI's columns among the modelled voxels (the ROIs' union);
        empty for whole-brain models."""
        return {
            subject: {name: torch.from_numpy(columns) for name, columns in info.roi_columns.items()}
            for subject, info in self._info.items()
            if info.roi_columns
        }

    def datasets(self, split: str) -> list[MemDataset]:
        """One dataset per subject for ``split``, built on first use."""
        if split not in self._datasets:
            teachers = self._teachers() if split == "train" and self.dark is not None else {}
            self._datasets[split] = [
                MemDataset(
                    subject_path(self.data_dir, name, self.space),
                    split,
                    self.rois,
                    self.data_dir / IMAGES_FILE,
                    **self.dataset_kwargs,
                    teacher=teachers.get(name),
                )
                for name in self.subjects
            ]
        return self._datasets[split]

    def _teachers(self) -> dict[str, SubjectPrediction]:
        """The teacher's verified predictions of every modelled subject's train split."""
        assert self.dark is not None
        try:
            teachers = read_teacher(self.data_dir, self.dark)
        except FileNotFoundError as error:
            raise LayoutError(self.data_dir, str(error)) from None
        lacking = sorted(set(self.subjects) - set(teachers))
        if lacking:
            raise LayoutError(self.data_dir, f"DATASET.DARK {self.dark}: no teacher predictions of {lacking}")
        return teachers

    def setup(self, stage: str) -> None:
        for split in STAGE_SPLITS[stage]:
            self.datasets(split)

    def _val_subset(self, datasets: Sequence[MemDataset]) -> Subset[dict[str, Any]]:
        generator = torch.Generator().manual_seed(VAL_SUBSET_SEED)
        keep, offset = [], 0
        for dataset in datasets:
            n = len(dataset)
            chosen = torch.randperm(n, generator=generator)[: max(1, round(self.val_fraction * n))]
            keep += (offset + chosen.sort().values).tolist()
            offset += n
        return Subset(ConcatDataset(datasets), keep)

    def _loader(self, split: str, shuffle: bool) -> DataLoader[Any]:
        datasets = self.datasets(split)
        subset = split == "val1" and self.val_fraction < 1
        dataset: Dataset[dict[str, Any]] = ConcatDataset(datasets)
        sampler = None
        if subset and self.val_subset == "redrawn":
            sampler = RandomSubsetSampler(len(dataset), max(1, round(self.val_fraction * len(dataset))))
        elif subset:
            dataset = self._val_subset(datasets)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_by_subject,
            generator=self.train_order if split == "train" else None,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"train_order": self.train_order.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_order.set_state(state_dict["train_order"])

    def train_dataloader(self) -> DataLoader[Any]:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader("val1", shuffle=False)

    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader("val2", shuffle=False)

    def predict_dataloader(self) -> DataLoader[Any]:
        return self._loader("predict", shuffle=False)
