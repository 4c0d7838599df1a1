"""The assembled Mem model: forward contract, training surface, caches, topyneck, checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.mem.config import RANDOM_BACKBONES, MemConfig, load_config, tiny
from jobs.mem.layers.mappers import negative_entropy
from jobs.mem.model import MemModel
from jobs.mem.subject import SubjectInfo

Build = Callable[..., MemModel]
MakeBatch = Callable[..., dict[str, torch.Tensor]]


def test_forward_shapes_for_two_subjects_and_an_roi(build: Build, make_batch: MakeBatch, tiny_config, subjects) -> None:
    model = build().eval()
    batch = make_batch(tiny_config, batch=3)
    roi = subjects["subj02"].voxels
    assert model(batch, "subj01").shape == (3, 300)
    assert model(batch, "subj02").shape == (3, len(roi))  # ROI-restricted subject
    assert model(batch, "subj01", torch.tensor([4, 0, 299])).shape == (3, 3)
    assert model(batch, "subj01", torch.tensor([], dtype=torch.long)).shape == (3, 0)
    assert model.readout["subj02"].weight.shape == (len(roi), tiny_config.MODEL.d_model)
    assert torch.isfinite(model(batch, "subj02")).all()


def test_chunked_equals_unchunked_and_subsets_equal_slices(build: Build, make_batch: MakeBatch, tiny_config) -> None:
    model = build().eval()
    batch = make_batch(tiny_config)
    assert model.chunk_size < 300
    with torch.no_grad():
        chunked = model(batch, "subj01")
        model.chunk_size = 10_000
        whole = model(batch, "subj01")
        subset = torch.tensor([250, 7, 7, 120])
        picked = model(batch, "subj01", subset)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(picked, whole[:, subset])


@pytest.fixture
def three_subjects(subjects: dict[str, SubjectInfo]) -> dict[str, SubjectInfo]:
    """subj01 (300 voxels), subj02 (a 7-voxel ROI) and subj03 (120 voxels)."""
    coords = np.random.default_rng(3).uniform(-40, 40, size=(120, 3)).astype(np.float32)
    return {**subjects, "subj03": SubjectInfo(coords)}


def _wake_adapters(model: MemModel) -> MemModel:
    """Non-zero AdaLN and LoRA-up weights: at their zero init no gradient reaches the conditions."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".modulation.weight", ".up.weight")):
                p.normal_(std=0.05)
    return model


def _mixed_batch(config: MemConfig, make_batch: MakeBatch) -> dict[str, dict[str, torch.Tensor]]:
    return {
        s: make_batch(config, batch=n, seed=i)
        for i, (s, n) in enumerate({"subj01": 2, "subj02": 3, "subj03": 1}.items())
    }


def test_mixed_batch_equals_per_subject_forward(
    build: Build, make_batch: MakeBatch, tiny_config: MemConfig, three_subjects: dict
) -> None:
    """Each backbone runs once over all subjects' samples; outputs and gradients are those of
    running each subject alone (eval mode: no dropout, no retina noise)."""
    model = _wake_adapters(build(infos=three_subjects)).eval()
    batches = _mixed_batch(tiny_config, make_batch)
    voxels = {"subj01": torch.randperm(300)[:150], "subj02": None, "subj03": None}  # 3, 1 and 2 chunks
    calls = []
    for vit in (model.current.backbone, model.previous.backbone):
        vit.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))

    mixed = model.forward_subjects(batches, voxels).preds
    assert calls == [6, 6]  # one pass of each ViT over the 2 + 3 + 1 samples
    sum(p.square().mean() for p in mixed.values()).backward()
    mixed_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    alone = {s: model(batch, s, voxels[s]) for s, batch in batches.items()}
    sum(p.square().mean() for p in alone.values()).backward()
    alone_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    assert {s: p.shape for s, p in mixed.items()} == {"subj01": (2, 150), "subj02": (3, 7), "subj03": (1, 120)}
    for subject, pred in mixed.items():
        torch.testing.assert_close(pred, alone[subject], rtol=1e-5, atol=1e-6)
    assert mixed_grads.keys() == alone_grads.keys()
    assert any(".subj03." in name for name in mixed_grads)  # per-subject modules have gradients
    for name, grad in mixed_grads.items():
        torch.testing.assert_close(grad, alone_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_mixed_batch_trains_every_subjects_modules(
    build: Build, make_batch: MakeBatch, tiny_config: MemConfig, three_subjects: dict
) -> None:
    model = _wake_adapters(build(infos=three_subjects)).train()
    out = model.forward_subjects(_mixed_batch(tiny_config, make_batch), {"subj01": torch.randperm(300)[:100]})
    (sum(p.square().mean() for p in out.preds.values()) + out.regularizer).backward()
    per_subject = {n: p for n, p in model.named_parameters() if ".subj0" in f".{n}"}
    for subject in three_subjects:
        names = [n for n in per_subject if f".{subject}." in f".{n}"]
        # behaviour embedders (5), time embedding, compression, RetinaMapper, LayerSelector, readout
        assert len({n.split(f".{subject}.")[0] for n in names}) == 10, names
        for name in names:
            grad = per_subject[name].grad
            assert grad is not None and grad.abs().sum() > 0, name


def test_shared_readout_option(build: Build, make_batch: MakeBatch, tiny_overrides: dict) -> None:
    config = load_config({**tiny_overrides, "MODEL.VOXEL_OUTS.SHARED.USE": True})
    model = build(config).eval()
    readout = model.readout["subj01"]
    assert (readout.bias == 0).all() and readout.bias.shape == (300,)
    assert model(make_batch(config), "subj01").shape == (2, 300)


def test_training_step_reaches_only_trainable_weights(build: Build, make_batch: MakeBatch, tiny_config) -> None:
    model = build().train()
    voxels = torch.randperm(300)[: tiny_config.MODEL.MAX_TRAIN_VOXELS]
    out = model.forward_subjects({"subj01": make_batch(tiny_config)}, {"subj01": voxels})
    loss = out.preds["subj01"].square().mean() + out.regularizer
    loss.backward()
    params = dict(model.named_parameters())
    for name, p in params.items():
        in_vit = ".backbone.vit." in name
        adapter = name.endswith((".down.weight", ".up.weight", ".modulation.weight"))
        assert p.requires_grad == (adapter or not in_vit), name
        if not p.requires_grad:
            assert p.grad is None, name
    grads = ("current.backbone.vit.blocks.0.modulation.weight", "current.backbone.vit.blocks.0.block.mlp.fc2.up.weight")
    for name in (
        *grads,
        "layer_selector.subj01.net.0.weight",
        "retina_mapper.subj01.net.0.weight",
        "readout.subj01.weight",
    ):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    assert params["readout.subj02.weight"].grad is None  # other subjects' modules are untouched


def test_positional_bounds_are_fixed_per_subject(build: Build, subjects: dict, full_coords: dict) -> None:
    model = build().train()  # trainable and training: the coordinate MLPs recompute, no cache
    selector = model.layer_selector["subj01"]
    alone = selector(torch.tensor([17]))
    among_all = selector(torch.arange(300))[17:18]
    among_few = selector(torch.tensor([17, 18, 200]))[:1]
    torch.testing.assert_close(alone, among_all)
    torch.testing.assert_close(alone, among_few)

    # an ROI model sees each voxel where the whole-brain model (and a topyneck trained on it) does
    whole = build(infos={**subjects, "subj02": SubjectInfo(full_coords["subj02"])}).train()
    model.layer_selector["subj02"].load_state_dict(whole.layer_selector["subj02"].state_dict())
    roi = subjects["subj02"].voxels
    roi_out = model.layer_selector["subj02"](torch.arange(len(roi)))
    torch.testing.assert_close(roi_out, whole.layer_selector["subj02"](torch.as_tensor(roi)))


def test_coordinate_caches_are_dropped_on_load_and_mode_change(
    build: Build, make_batch: MakeBatch, tiny_config
) -> None:
    model, other = build(seed=0).eval(), build(seed=1).eval()
    batch = make_batch(tiny_config)
    voxels = torch.arange(300)
    with torch.no_grad():
        before = model(batch, "subj01")
        selector_before = model.layer_selector["subj01"](voxels)  # served from the cache
        model.load_trainable_state_dict(other.trainable_state_dict())
        torch.testing.assert_close(model.layer_selector["subj01"](voxels), other.layer_selector["subj01"](voxels))
        torch.testing.assert_close(model(batch, "subj01"), other(batch, "subj01"))
        assert not torch.allclose(model(batch, "subj01"), before)

        weight = model.layer_selector["subj01"].net[0].weight
        weight.copy_(torch.randn_like(weight))  # an in-place change, as an optimizer step makes
        model.train().eval()  # ... between two validation epochs
        assert not torch.allclose(model.layer_selector["subj01"](voxels), selector_before)
        assert not torch.allclose(model.layer_selector["subj01"](voxels), other.layer_selector["subj01"](voxels))


def test_retina_noise_is_training_only(build: Build) -> None:
    mapper = build().retina_mapper["subj01"]
    voxels = torch.arange(300)
    mapper.eval()
    clean = mapper(voxels)
    assert clean.abs().max() < 0.99
    mapper.requires_grad_(False).train()  # frozen but training: cached mu plus fresh noise
    noisy_a, noisy_b = mapper(voxels), mapper(voxels)
    assert not torch.allclose(noisy_a, noisy_b)
    assert (noisy_a - clean).std().item() == pytest.approx(0.01, rel=0.2)


def test_layer_selector_regularizer(build: Build, make_batch: MakeBatch, tiny_config: MemConfig) -> None:
    model = build().train()
    batches = {"subj01": make_batch(tiny_config), "subj02": make_batch(tiny_config, seed=1)}
    voxels = {"subj01": torch.tensor([3, 250, 17]), "subj02": None}
    reg = model.forward_subjects(batches, voxels).regularizer
    assert reg.requires_grad
    expected = [
        negative_entropy(model.layer_selector[s](torch.arange(7) if v is None else v)) for s, v in voxels.items()
    ]
    torch.testing.assert_close(reg, sum(expected))  # per subject, over the voxels predicted
    n_layers = len(load_config(tiny()).MODEL.BACKBONE.LAYERS)
    assert all(-np.log(n_layers) - 1e-6 <= e.item() <= 0 for e in expected)
    model.freeze_topyneck()
    assert model.forward_subjects(batches, voxels).regularizer.item() == 0


def test_trainable_state_dict_round_trip(build: Build, make_batch: MakeBatch, tiny_config) -> None:
    source, target = build(seed=0).eval(), build(seed=1).eval()
    state = source.trainable_state_dict()
    assert set(state) == {n for n, p in source.named_parameters() if p.requires_grad}
    assert set(source.state_dict()) == {n for n, _ in source.named_parameters()}  # no persistent buffers
    assert not any(
        ".base." in n or n.startswith(("current.backbone.vit.pos", "previous.backbone.vit.pos")) for n in state
    )
    target.load_trainable_state_dict(state)
    batch = make_batch(tiny_config)
    with torch.no_grad():
        torch.testing.assert_close(target(batch, "subj02"), source(batch, "subj02"), rtol=0, atol=0)

    with pytest.raises(RuntimeError, match=r"unexpected \['stray.weight'\]"):
        target.load_trainable_state_dict({**state, "stray.weight": torch.zeros(1)})
    partial = {k: v for k, v in state.items() if not k.startswith("readout.")}
    with pytest.raises(RuntimeError, match=r"missing \['readout.subj01.bias'"):
        target.load_trainable_state_dict(partial)
    missing, unexpected = target.load_trainable_state_dict(partial, strict=False)
    assert missing == sorted(k for k in state if k.startswith("readout.")) and unexpected == []


def test_topyneck_load_freezes_and_survives_checkpoints(
    build: Build, make_batch: MakeBatch, tiny_config: MemConfig, tiny_overrides: dict, tmp_path: Path
) -> None:
    trained = build(seed=0).eval()
    topyneck = trained.topyneck_state_dict()
    assert topyneck and all(k.startswith(("retina_mapper.subj0", "layer_selector.subj0")) for k in topyneck)

    model = build(seed=1)
    model.load_topyneck(topyneck)
    model.eval()
    voxels = torch.arange(300)
    for group in ("retina_mapper", "layer_selector"):
        module = getattr(model, group)["subj01"]
        assert not any(p.requires_grad for p in module.parameters())
        torch.testing.assert_close(module(voxels), getattr(trained, group)["subj01"](voxels))
    assert not any(k.startswith(("retina_mapper", "layer_selector")) for k in model.trainable_state_dict())

    # from the config: loaded and frozen at construction, so a checkpoint restores the same model
    path = tmp_path / "topyneck.pth"
    torch.save(topyneck, path)
    config = load_config({**tiny_overrides, "MODEL.TOPYNECK_PATH": str(path)})
    rebuilt = build(config, seed=2).eval()
    rebuilt.load_trainable_state_dict(model.trainable_state_dict())
    batch = make_batch(tiny_config)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(batch, "subj01"), model(batch, "subj01"))


def test_topyneck_errors_name_the_file_and_subject(build: Build, tiny_overrides: dict, tmp_path: Path) -> None:
    topyneck = build().topyneck_state_dict()
    only_subj01 = {k: v for k, v in topyneck.items() if ".subj02." not in k}
    with pytest.raises(
        ValueError, match=r"^/x/t\.pth: no retina_mapper weights for subject subj02 \(it has \['subj01'\]\)"
    ):
        build().load_topyneck(only_subj01, source="/x/t.pth")
    missing = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError, match=rf"^MODEL\.TOPYNECK_PATH: file {missing} does not exist"):
        build(load_config({**tiny_overrides, "MODEL.TOPYNECK_PATH": str(missing)}))
    other_layers = {**tiny_overrides, "MODEL.BACKBONE.LAYERS": [2, 3], "MODEL.BACKBONE.CLS_DIMS": [64, 32]}
    with pytest.raises(ValueError, match=r"^src: layer_selector\.subj01 does not fit this model"):
        build(load_config(other_layers)).load_topyneck(topyneck, source="src")


def test_subject_info_validates_its_arrays() -> None:
    coords = np.zeros((10, 3))
    with pytest.raises(ValueError, match="coords"):
        SubjectInfo(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="voxels"):
        SubjectInfo(coords, voxels=np.array([3, 10]))
    assert SubjectInfo(coords, voxels=np.array([9, 0])).n_voxels == 2


def test_full_size_default_config_builds_on_cpu(make_batch: MakeBatch) -> None:
    """The real recipe (ViT-B/14 + ViT-S/14, random init asked for): parameter count and output shapes."""
    config = load_config(RANDOM_BACKBONES)
    rng = np.random.default_rng(0)
    infos = {
        "subj01": SubjectInfo(rng.normal(size=(1000, 3))),
        "subj02": SubjectInfo(rng.normal(size=(700, 3))),
        "subj03": SubjectInfo(rng.normal(size=(900, 3)), voxels=np.arange(0, 750, 3)),  # a 250-voxel ROI
    }
    torch.manual_seed(0)
    model = MemModel(config, infos).eval()
    # Hand count for these 3 subjects (S) and 1950 modelled voxels:
    #   ViT-B LoRA 12 * 4*(768+2304 + 768+768 + 768+3072 + 3072+768)        =     589,824
    #   ViT-B AdaLN 12 * 256*6*768                                           =  14,155,776
    #   conv heads 4 * (2*(768*768*25 + 2*768) + 768*192*25)                 = 132,722,688
    #   class MLPs 3 * (1536*1536+1536 + 1536*192+192) + 768*768+768 + 768*192+192 = 8,706,048
    #   ViT-S LoRA 294,912 + AdaLN 7,077,888 + class MLP 384*384+384 + 384*64+64 = 7,545,280
    #   behaviour 3 * (S*(35*256+256) + 2*(256*256+256)) + 2 * (S*(35*32+32) + 2*(32*32+32)) = 488,832
    #   time embed S*(256*64+64) + 64*64+64 = 53,504; frame Mlp 1344*1344+1344 + 1344*64+64 = 1,893,760
    #   compress S*(1984*256+256) + Mlp(256->256->64) 82,240                 =   1,606,720
    #   coords MLPs S * ((192*128+128 + 128*128+128) * 2 + 129*2 + 129*4)    =     249,618
    #   readout 1950 * (384 + 1)                                             =     750,750
    #   total                                                                = 168,762,800
    assert sum(p.numel() for p in model.trainable_state_dict().values()) == 168_762_800
    batch = make_batch(config, batch=1)
    with torch.no_grad():
        assert model(batch, "subj01").shape == (1, 1000)
        assert model(batch, "subj02").shape == (1, 700)
        assert model(batch, "subj03").shape == (1, 250)
