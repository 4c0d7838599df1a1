"""The reference-compatible mode: COMPAT flips every training switch of jobs/compat.py, and each
switch changes what the reference code does differently (real models, data and Lightning runs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from jobs import compat
from jobs.data.layout import open_subject
from jobs.data.synth import SynthInfo
from jobs.mem.build import build as build_job
from jobs.mem.config import ConfigError, MemConfig, load_config, validate_params
from jobs.mem.data import MemDataModule, MemDataset, RandomSubsetSampler
from jobs.mem.ensemble.soup import _make
from jobs.mem.layers.coords import fourier_features
from jobs.mem.model import MemModel
from jobs.mem.subject import SubjectInfo
from jobs.mem.train.lit import MemLit
from memq.checkpoints import sha256_file

from .conftest import ROI
from .independent import mean_r, split_r
from .queue_rig import QueueRig

Build = Callable[..., MemModel]
MakeBatch = Callable[..., dict[str, torch.Tensor]]
CPU = torch.device("cpu")


def config(overrides: dict[str, Any], **settings: Any) -> MemConfig:
    return load_config({**overrides, **settings})


# -- the config and the docs --------------------------------------------------------------------


def test_the_preset_selects_each_switch_and_a_switch_overrides_it(tiny_overrides: dict) -> None:
    memq, reference = config(tiny_overrides), config(tiny_overrides, COMPAT="reference")
    for switch in compat.switches("training"):
        assert memq.switch(switch.name) == switch.memq
        assert reference.switch(switch.name) == switch.reference
    one_fix = config(tiny_overrides, COMPAT="reference", **{"SWITCHES.PE_BOUNDS": "subject"})
    assert one_fix.switch("PE_BOUNDS") == "subject" and one_fix.switch("PREV_BHVS") == "local"
    with pytest.raises(KeyError, match="did you mean PE_BOUNDS"):
        memq.switch("PE_BOUND")
    with pytest.raises(KeyError, match="data-preparation switch"):
        memq.switch("NC_SEARCH")
    with pytest.raises(ConfigError, match=r"SWITCHES\.PE_BOUNDS: Input should be 'subject' or 'subset'"):
        validate_params({"SWITCHES.PE_BOUNDS": "roi"})
    with pytest.raises(ConfigError, match=r"did you mean SWITCHES\.PE_BOUNDS"):
        validate_params({"SWITCHES.PE_BOUND": "subset"})
    with pytest.raises(ConfigError, match="COMPAT: Input should be 'memq' or 'reference'"):
        validate_params({"COMPAT": "paper"})


def test_the_docs_table_lists_every_switch_with_its_values() -> None:
    doc = (Path(__file__).parents[2] / "jobs/mem/COMPAT.md").read_text()
    assert compat.markdown_table() in doc  # regenerate with `python -m jobs.compat`
    for switch in compat.SWITCHES:
        row = next(line for line in doc.splitlines() if line.startswith(f"| {switch.name} |"))
        assert f"`{switch.memq}`" in row and f"`{switch.reference}`" in row
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "COMPAT=reference" in readme and "jobs/mem/COMPAT.md" in readme


# -- PE_BOUNDS ----------------------------------------------------------------------------------


def reference_positions(coords: np.ndarray) -> torch.Tensor:
    """mem-spec 2.3 over the coordinates passed in: shift by their minimum, widest axis to 0..100."""
    c = torch.as_tensor(coords, dtype=torch.float32)
    low = c.min(0).values
    return (c - low) * 100 / (c.max(0).values - low).max()


def test_switch_pe_bounds(build: Build, tiny_overrides: dict, full_coords: dict[str, np.ndarray]) -> None:
    coords = full_coords["subj02"]
    whole_brain, roi = {"subj02": SubjectInfo(coords)}, {"subj02": SubjectInfo(coords, voxels=ROI)}
    outputs = {}
    for preset in compat.PRESETS:
        cfg = config(tiny_overrides, COMPAT=preset)
        whole, part = build(cfg, whole_brain).eval(), build(cfg, roi).eval()
        mapper = part.retina_mapper["subj02"]
        mapper.load_state_dict(whole.retina_mapper["subj02"].state_dict())  # the same MLP
        outputs[preset] = (whole.retina_mapper["subj02"](torch.as_tensor(ROI)), mapper(torch.arange(len(ROI))))
        if preset == "reference":  # the ROI's own bounds; in training, the bounds of the sample
            expected = mapper.net(fourier_features(reference_positions(coords[ROI])))
            torch.testing.assert_close(mapper(torch.arange(len(ROI))), 0.99 * expected)
            mapper.train()
            sample = torch.tensor([4, 0, 6])
            with torch.no_grad():
                trained = mapper.net(fourier_features(reference_positions(coords[ROI][sample.numpy()])))
                noisy = mapper(sample)  # 0.99 * mu + N(0, 0.01^2) noise
            assert (noisy - 0.99 * trained).abs().max() < 0.06
    whole_out, roi_out = outputs["memq"]
    torch.testing.assert_close(roi_out, whole_out)  # an ROI voxel is where the whole brain has it
    whole_out, roi_out = outputs["reference"]
    assert (roi_out - whole_out).abs().max() > 1e-3


# -- PREV_BHVS ----------------------------------------------------------------------------------


def reference_prev_bhvs(behavior: np.ndarray, memory_index: np.ndarray, split: np.ndarray) -> dict[int, np.ndarray]:
    """The reference's loop (mem-spec 1.5), on the split-subset arrays, per global trial."""
    trials = np.sort(split)
    sub_behavior, sub_memory = behavior[trials], memory_index[trials]
    rows = {}
    for i, g in enumerate(trials):
        picked, blanks = [], 0
        for k in range(32):
            if sub_memory[i, 31 - k] == -1:
                picked.append(sub_behavior[-1])  # "the last row": a real trial of the split
                blanks += 1
            else:
                picked.append(sub_behavior[i - k - 1 + blanks])  # local index, may wrap around
        rows[int(g)] = np.stack(picked)
    return rows


def test_switch_prev_bhvs(synth_data: SynthInfo) -> None:
    subject_file, images = synth_data.data_dir / "subj01.h5", synth_data.data_dir / "images.h5"
    with open_subject(subject_file) as f:
        behavior, memory_index, split = f.behavior(), f.memory_index(), f.split("val1")
    expected = reference_prev_bhvs(behavior, memory_index, split)
    local = MemDataset(subject_file, "val1", None, images, prev_bhvs="local")
    global_ = MemDataset(subject_file, "val1", None, images)
    differ = 0
    for i in range(0, len(local), 7):
        sample, fixed = local[i], global_[i]
        assert sample["index"] == fixed["index"]
        np.testing.assert_array_equal(sample["prev_bhvs"].numpy(), expected[sample["index"]])
        differ += not torch.equal(sample["prev_bhvs"], fixed["prev_bhvs"])
    assert differ > 0


# -- VAL_SUBSET ---------------------------------------------------------------------------------


def _val_trials(data: MemDataModule) -> list[tuple[str, int]]:
    loader = data.val_dataloader()
    return sorted((s, int(g)) for batch in loader for s, b in batch.items() for g in b["index"])


def test_switch_val_subset(job_params: dict[str, Any], tmp_path: Path) -> None:
    epochs = {}
    for preset in compat.PRESETS:
        built = build_job({**job_params, "COMPAT": preset}, 0, [], tmp_path, val_fraction=0.25)
        epochs[preset] = [_val_trials(built.data) for _ in range(2)]
        n_val = sum(len(d) for d in built.data.datasets("val1"))
        assert abs(len(epochs[preset][0]) - 0.25 * n_val) <= 2
        sampler = built.data.val_dataloader().sampler
        assert isinstance(sampler, RandomSubsetSampler) == (preset == "reference")
    assert epochs["memq"][0] == epochs["memq"][1]  # the same trials every epoch
    assert epochs["reference"][0] != epochs["reference"][1]  # a fresh draw every epoch


# -- WARMUP_LAG, SYNC_SANITY, SYNC_START: one short Lightning fit per preset ---------------------


class Recorder(Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []
        self.weighted: list[bool] = []
        self.fed_by_sanity_check: bool | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: MemLit) -> None:
        self.fed_by_sanity_check = bool(pl_module.sync.prev_r)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: MemLit) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: MemLit, batch: Any, batch_idx: int) -> None:
        self.weighted.append(pl_module._voxel_weights("subj01", None, CPU) is not None)


def _fit(cfg: MemConfig, model: MemModel, batch: dict, tmp_path: Path) -> Recorder:
    recorder = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=4,
        num_sanity_val_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
        default_root_dir=tmp_path,
    )
    loader = DataLoader([batch], batch_size=None)
    trainer.fit(MemLit(cfg, model), train_dataloaders=loader, val_dataloaders=loader)
    return recorder


MID = 1e-6 + (1e-3 - 1e-6) / 2  # the rate half-way through a 2-epoch warm-up
LOOP = {  # preset (+ overrides) -> (rate of each epoch, SYNC-weighted epochs, sanity check fed the EMA)
    "memq": ([1e-6, MID, 1e-3, 1e-3], [False, True, True, True], False),
    "reference": ([1e-6, 1e-6, MID, 1e-3], [False, False, True, True], True),
    "reference, three fixes": ([1e-6, MID, 1e-3, 1e-3], [False, True, True, True], False),
}


@pytest.mark.parametrize("case", list(LOOP))
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")
def test_switches_of_the_training_loop(
    case: str, build: Build, make_batch: MakeBatch, tiny_overrides: dict, tmp_path: Path
) -> None:
    """WARMUP_LAG: the reference trains epoch e at the rate of e-1. SYNC_SANITY: its sanity check
    feeds the EMA. SYNC_START: its first weighted epoch is SKIP_EPOCHS + 1."""
    fixes = {"SWITCHES.WARMUP_LAG": "none", "SWITCHES.SYNC_SANITY": "skip", "SWITCHES.SYNC_START": "at_skip"}
    cfg = config(
        tiny_overrides,
        COMPAT=case.split(",")[0],
        **{"OPTIMIZER.LR": 1e-3, "OPTIMIZER.SCHEDULER.WARMUP_EPOCHS": 2, "LOSS.SYNC.SKIP_EPOCHS": 1},
        **(fixes if "fixes" in case else {}),
    )
    batch = {"subj01": {**make_batch(cfg, batch=4), "y": torch.randn(4, 300)}}
    recorder = _fit(cfg, build(cfg), batch, tmp_path)
    rates, weighted, fed = LOOP[case]
    np.testing.assert_allclose(recorder.rates, rates, rtol=1e-9)
    assert recorder.weighted == weighted
    assert recorder.fed_by_sanity_check == fed


# -- COORD_CACHE --------------------------------------------------------------------------------


def test_switch_coord_cache(build: Build, tiny_overrides: dict) -> None:
    voxels = torch.arange(300)
    for preset in compat.PRESETS:
        cfg = config(tiny_overrides, COMPAT=preset)
        model, other = build(cfg, seed=0).eval(), build(cfg, seed=1).eval()
        before, wanted = model.layer_selector["subj01"](voxels), other.layer_selector["subj01"](voxels)
        assert not torch.allclose(before, wanted)
        model.load_trainable_state_dict(other.trainable_state_dict())  # as a soup is evaluated
        model.train().eval()
        after = model.layer_selector["subj01"](voxels)
        if preset == "memq":
            torch.testing.assert_close(after, wanted)
        else:  # stale: the outputs of the weights the model had before
            torch.testing.assert_close(after, before)
            model.train()
            model.layer_selector["subj01"](voxels)  # a training forward is the only invalidation
            torch.testing.assert_close(model.eval().layer_selector["subj01"](voxels), wanted)


# -- LAYER_ENTROPY ------------------------------------------------------------------------------


def test_switch_layer_entropy(build: Build, make_batch: MakeBatch, tiny_overrides: dict) -> None:
    regularizer = {}
    for name, settings in {
        "memq": {},
        "reference": {"COMPAT": "reference"},
        "sharp": {"SWITCHES.LAYER_ENTROPY": "sharp"},
    }.items():
        cfg = config(tiny_overrides, **settings)
        model = build(cfg).train()
        regularizer[name] = model.forward_subjects({"subj01": make_batch(cfg)}).regularizer
    assert regularizer["memq"] < 0  # sum w log w: minimising it pushes towards uniform, as the reference
    torch.testing.assert_close(regularizer["reference"], regularizer["memq"])
    torch.testing.assert_close(regularizer["sharp"], -regularizer["memq"])


# -- GREEDY_SOUP --------------------------------------------------------------------------------


def test_switch_greedy_soup(job_params: dict[str, Any], tmp_path: Path) -> None:
    rows = []
    for i in range(3):  # three "checkpoints": trainable weights of differently seeded models
        torch.manual_seed(i)
        state = MemModel(load_config({**job_params}), _infos(job_params)).trainable_state_dict()
        path = tmp_path / f"c{i}.pt"
        torch.save(state, path)
        rows.append({"id": i, "metric": [0.3, 0.5, 0.1][i], "path": str(path), "synced_path": None,
                     "size": path.stat().st_size, "sha256": sha256_file(path)})  # fmt: skip
    summaries = {}
    rig = QueueRig(tmp_path / "queue")  # a real attempt's context, as mem.soup gets it
    for preset in compat.PRESETS:
        rig.submit("mem.soup", {"source_job": 1, "recipe": "greedy"}, group=preset)
        built = build_job({**job_params, "COMPAT": preset}, 0, [], tmp_path)
        state, summaries[preset] = _make(rig.claim(), rows, "greedy", built)
        val2 = mean_r(split_r(built, job_params, state, "val2"))  # recomputed in NumPy from the betas
        assert summaries[preset]["val2"] == pytest.approx(val2, abs=1e-5)
    ours, theirs = summaries["memq"], summaries["reference"]
    assert ours["selection_split"] == "val1" and ours["members"][0] == 1
    assert len(set(ours["members"])) == len(ours["members"])  # the best once
    # the reference's: every checkpoint from the best on is tried (the best against itself first),
    # each kept if its val2 r beats the best so far, which starts at 0 (jobs.mem.ensemble.soup_recipes counts the
    # best twice when it is kept: tests/queue/test_soup.py)
    assert theirs["selection_split"] == "val2"
    assert [t["checkpoint"] for t in theirs["trace"]] == [1, 0, 2]  # 1: the best against itself
    assert all(t["selection"] == t["reported"] for t in theirs["trace"])  # selected on what it reports
    best, kept = 0.0, []
    for t in theirs["trace"]:
        assert t["kept"] == (t["selection"] > best)
        best, kept = (t["selection"], [*kept, t["checkpoint"]]) if t["kept"] else (best, kept)
    assert theirs["members"] == [1, *kept]
    assert [t["checkpoint"] for t in ours["trace"]] == [1, 0, 2]
    assert all(t["selection"] != t["reported"] for t in ours["trace"])  # val1 vs val2


def _infos(params: dict[str, Any]) -> dict[str, SubjectInfo]:
    return MemDataModule(params["DATASET.DIR"]).subject_info()


# -- every switch has a test of its effect -------------------------------------------------------

EFFECT_TESTS = {
    "PE_BOUNDS": test_switch_pe_bounds,
    "PREV_BHVS": test_switch_prev_bhvs,
    "VAL_SUBSET": test_switch_val_subset,
    "WARMUP_LAG": test_switches_of_the_training_loop,
    "SYNC_SANITY": test_switches_of_the_training_loop,
    "SYNC_START": test_switches_of_the_training_loop,
    "COORD_CACHE": test_switch_coord_cache,
    "GREEDY_SOUP": test_switch_greedy_soup,
    "LAYER_ENTROPY": test_switch_layer_entropy,
}


def test_every_training_switch_has_a_test_of_its_effect() -> None:
    assert set(EFFECT_TESTS) == {s.name for s in compat.switches("training")}
