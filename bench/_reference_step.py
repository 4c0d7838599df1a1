"""The reference's training step for ``bench/mem_train_step.py --reference DIR``.

DIR is the user's clone of huzeyann/MemoryEncodingModel; nothing of it is copied here. Its
``mem/`` modules are imported at run time (``DIR/mem`` put first on sys.path, as the reference
runs from that folder) and its own LightningModule (``plmodels.PlVEModel``, wrapping
``models.MemVoxelWiseEncodingModel``) is trained for the timed steps, with its own loss, metric
updates and AdamW parameter groups. What the bench changes, and why:

- DINOv2 comes from ``torch.hub.load("facebookresearch/dinov2", ...)`` in the reference, which
  downloads code and weights. Here that call builds the ``dinov2`` package's
  DinoVisionTransformer with random init and the hub's settings (518 px position grid,
  interpolated to the input every step; layer-scale 1.0; MLP FFN), at the widths of memq's ViTs
  for the same config. Nothing is downloaded.
- The reference ran DINOv2 with xFormers' memory-efficient attention. Where xformers is not
  importable, ``--ref-attention auto`` swaps in PyTorch's scaled_dot_product_attention (the
  closest stand-in); ``plain`` keeps dinov2's own fallback (explicit softmax(QK^T)V). The table
  names the one used.
- PL 2 refuses the reference's PL 1 ``*_epoch_end`` hooks, and its ``on_fit_start`` writes the
  config into the logger's folder: a subclass sets the hooks to None and skips that write (epoch
  ends are outside the timed steps anyway).
- Settings: ``mem/configs/xvba.yaml`` (the base of xvbc) overridden with memq's config through
  :func:`reference_overrides`, so both models have the same widths, voxels and batch.

Importing the reference's config.py rewrites DIR/mem/config.pyi (its yacs-stubgen call; the same
content as the committed file): the only write into DIR.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import Tensor

from bench._common import table
from jobs.mem.config import BackboneConfig, MemConfig

# Third-party modules the reference's mem/ imports that memq does not need (module -> pip spec).
PIP = {
    "einops": "einops==0.8.2",
    "yacs": "yacs==0.1.8",
    "yacs_stubgen": "yacs-stubgen==0.3.1",
    "dotenv": "python-dotenv==1.2.4",
    "seaborn": "seaborn==0.13.2",
    "open_clip": "open-clip-torch==3.3.0",
}
DINOV2 = "dinov2==0.0.1.dev2"  # pins torch==2.0.0 and xformers: install it with --no-deps
CLONE_MARKERS = {  # file -> a name it defines; all present = a clone of the reference
    "mem/plmodels.py": "class PlVEModel",
    "mem/models.py": "class MemVoxelWiseEncodingModel",
    "mem/backbone.py": "def build_backbone",
    "mem/config.py": "_C.MODEL.BACKBONE_SMALL",
    "mem/configs/xvba.yaml": "LIMIT_TRAIN_BATCHES",
}
HUB_NAMES = {"current": ("dinov2_vit_b", "dinov2_vitb14"), "previous": ("dinov2_vit_s", "dinov2_vits14")}
HUB_IMG_SIZE = 518  # the position grid of torch.hub's DINOv2 models (37 x 37 patches of 14 px)

# xvbc (mem-spec 4.1; grids/xvbc.yaml): 3 + 9 + 9 + 10 x 9 runs, all 8 subjects, topyneck frozen.
XVBC_JOBS = 111
NSD_SESSIONS = (40, 40, 32, 30, 40, 32, 40, 30)  # sessions completed, subj01..08; the last 3 are held out
TRAIN_IMAGE_SHARE = 0.94  # train holds the trials of the first 94% of the shuffled images (mem-spec 1.2)


def fail(what: str) -> NoReturn:
    """One line on stderr and exit code 2 (a bad DIR or a missing package)."""
    print(f"error: {what}", file=sys.stderr)
    raise SystemExit(2)


def check_clone(directory: str) -> Path:
    """DIR/mem, or a one-line error when DIR is not a clone of the reference."""
    root = Path(directory).expanduser()
    for rel, marker in CLONE_MARKERS.items():
        path = root / rel
        if not path.is_file() or marker not in path.read_text(errors="replace"):
            fail(f"--reference {directory}: not a clone of huzeyann/MemoryEncodingModel "
                 f"({rel} missing or without '{marker}')")
    return root / "mem"


def missing_packages() -> list[str]:
    """pip specs of the reference's imports that are not installed."""
    return [spec for module, spec in PIP.items() if importlib.util.find_spec(module) is None]


def import_reference(directory: str) -> SimpleNamespace:
    """The reference's modules the bench uses, imported from DIR/mem."""
    mem = check_clone(directory)
    missing = missing_packages()
    commands = [f"pip install {' '.join(missing)}"] if missing else []
    if importlib.util.find_spec("dinov2") is None:
        commands.append(f"pip install --no-deps {DINOV2}")
    if commands:
        fail(f"--reference: the reference's imports need: {' && '.join(commands)}")
    sys.path.insert(0, str(mem))
    names = ["plmodels", "config_utils", "backbone", "dinov2.layers.attention", "dinov2.layers.block",
             "dinov2.models.vision_transformer"]
    modules = {name.rsplit(".", 1)[-1]: importlib.import_module(name) for name in names}
    modules["attention_module"] = modules.pop("attention")
    return SimpleNamespace(mem=mem, attention="", **modules)


def vit_shape(config: BackboneConfig, img_size: int) -> dict[str, Any]:
    """Width, depth, heads, patch and MLP ratio of the timm ViT memq builds from ``config``."""
    with torch.device("meta"):
        vit = timm.create_model(config.NAME, pretrained=False, num_classes=0, img_size=img_size, **config.KWARGS)
    block = vit.blocks[0]
    return {
        "embed_dim": vit.embed_dim,
        "depth": len(vit.blocks),
        "num_heads": block.attn.num_heads,
        "patch_size": vit.patch_embed.patch_size[0],
        "mlp_ratio": block.mlp.fc1.out_features / vit.embed_dim,
    }


@contextmanager
def random_hub(ref: SimpleNamespace, shapes: dict[str, dict[str, Any]], img_size: int) -> Iterator[None]:
    """torch.hub.load of the DINOv2 names in ``shapes`` builds a randomly initialised model instead."""
    vits, block = ref.vision_transformer, ref.block
    original = torch.hub.load

    def load(repo: str, model: str, *args: Any, **kwargs: Any) -> Any:
        if repo != "facebookresearch/dinov2" or model not in shapes:
            raise RuntimeError(f"bench: torch.hub.load({repo!r}, {model!r}) not expected; nothing is downloaded")
        return vits.DinoVisionTransformer(
            img_size=img_size, init_values=1.0, ffn_layer="mlp", block_chunks=0,
            block_fn=partial(block.Block, attn_class=ref.attention_module.MemEffAttention), **shapes[model],
        )

    torch.hub.load = load
    try:
        yield
    finally:
        torch.hub.load = original


def _sdpa_forward(self: Any, x: Tensor, attn_bias: Any = None) -> Tensor:
    """dinov2's attention through F.scaled_dot_product_attention (a stand-in for xFormers)."""
    b, n, c = x.shape
    q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    x = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
    return self.proj_drop(self.proj(x))


def set_attention(ref: SimpleNamespace, mode: str) -> None:
    """Choose the reference's DINOv2 attention; ``ref.attention`` is its label for the table."""
    if ref.attention_module.XFORMERS_AVAILABLE:
        ref.attention = "xformers"
    elif mode == "plain":
        ref.attention = "plain (no xformers)"
    else:
        ref.attention_module.MemEffAttention.forward = _sdpa_forward
        ref.attention = "sdpa (for xformers)"


def reference_overrides(config: MemConfig, subjects: list[str], batch: int) -> dict[str, Any]:
    """The reference's config keys set to memq's values (jobs/mem/config.py mirrors its names)."""
    m, big, small = config.MODEL, config.MODEL.BACKBONE, config.MODEL.BACKBONE_SMALL
    n = len(big.LAYERS)
    out: dict[str, Any] = {
        "DATASET.SUBJECT_LIST": subjects,
        "DATASET.N_PREV_FRAMES": config.DATASET.N_PREV_FRAMES,
        "DATASET.IMAGE_RESOLUTION": [config.DATASET.IMAGE_SIZE] * 2,
        "DATAMODULE.BATCH_SIZE": batch,
        "MODEL.BACKBONE.NAME": HUB_NAMES["current"][0],
        "MODEL.BACKBONE.FEATURE_DIMS": [big.FEATURE_DIM] * n,
        "MODEL.BACKBONE_SMALL.NAME": HUB_NAMES["previous"][0],
        "MODEL.BACKBONE_SMALL.WIDTH": small.WIDTH,
        "MODEL.BACKBONE_SMALL.MERGE_WIDTH": small.MERGE_WIDTH,
        "MODEL.BACKBONE_SMALL.T_DIM": small.T_DIM,
        "MODEL.CONV_HEAD.WIDTH": m.CONV_HEAD.WIDTH,
        "MODEL.CONV_HEAD.MAX_DIM": m.CONV_HEAD.MAX_DIM,
        "MODEL.CONV_HEAD.KERNEL_SIZES": [m.CONV_HEAD.KERNEL] * n,
        "MODEL.CONV_HEAD.DEPTHS": [m.CONV_HEAD.DEPTH] * n,
        "MODEL.RETINA_MAPPER.CONSTANT_SIGMA": m.RETINA_MAPPER.SIGMA,
        "MODEL.PREV_FEAT.DIM": m.PREV_FEAT.DIM,
        "MODEL.VOXEL_OUTS.SHARED.USE": m.VOXEL_OUTS.SHARED.USE,
        "MODEL.VOXEL_OUTS.SHARED.MLP.WIDTH": m.VOXEL_OUTS.SHARED.MLP.WIDTH,
        "MODEL.VOXEL_OUTS.SHARED.MLP.DEPTH": m.VOXEL_OUTS.SHARED.MLP.DEPTH,
        "MODEL.MAX_TRAIN_VOXELS": m.MAX_TRAIN_VOXELS,
        "MODEL.CHUNK_SIZE": m.CHUNK_SIZE,
        "MODEL.WIDTH_RATIO": m.WIDTH_RATIO,
        "LOSS.SMOOTH_L1_BETA": config.LOSS.SMOOTH_L1_BETA,
        "LOSS.DARK.USE": config.LOSS.DARK.USE,
        "REGULARIZER.LAYER": config.REGULARIZER.LAYER,
        "OPTIMIZER.LR": config.OPTIMIZER.LR,
        "OPTIMIZER.WEIGHT_DECAY": config.OPTIMIZER.WEIGHT_DECAY,
        "TRAINER.GRADIENT_CLIP_VAL": config.TRAINER.GRADIENT_CLIP_VAL,
        "TRAINER.ACCUMULATE_GRAD_BATCHES": config.TRAINER.ACCUMULATE_GRAD_BATCHES,
    }
    for section, ours in (("BACKBONE", big), ("BACKBONE_SMALL", small)):
        out[f"MODEL.{section}.LAYERS"] = ours.LAYERS
        out[f"MODEL.{section}.CLS_DIMS"] = ours.CLS_DIMS
        out[f"MODEL.{section}.LORA.RANK"] = ours.LORA.RANK
        out[f"MODEL.{section}.LORA.SCALE"] = ours.LORA.SCALE
        out[f"MODEL.{section}.ADAPTIVE_LN.SCALE"] = ours.ADAPTIVE_LN.SCALE
    for key in ("DIM", "IN_DIM", "DROPOUT", "PASSTHROUGH_DIM"):
        out[f"MODEL.COND.{key}"] = getattr(m.COND, key)
    for key in ("WIDTH", "DEPTH"):
        out[f"MODEL.COORDS_MLP.{key}"] = getattr(m.COORDS_MLP, key)
    return out


def xvba_config(ref: SimpleNamespace, overrides: dict[str, Any] | None = None) -> Any:
    """The reference's xvba.yaml (the base config of xvbc) with ``overrides``."""
    pairs = [item for key_value in (overrides or {}).items() for item in key_value]
    return ref.config_utils.load_from_yaml(str(ref.mem / "configs" / "xvba.yaml"), list_cfg_override=pairs)


def bench_module(ref: SimpleNamespace) -> type:
    """The reference's PlVEModel, made acceptable to PL 2 (see the module docstring)."""

    class BenchPlVEModel(ref.plmodels.PlVEModel):  # type: ignore[misc,name-defined]
        training_epoch_end = validation_epoch_end = test_epoch_end = None

        def on_fit_start(self) -> None:
            pass

    return BenchPlVEModel


def reference_batch(batch: dict[str, dict[str, Tensor]]) -> tuple[Any, ...]:
    """memq's per-subject batch as the reference's collate_fn tuple (the same tensors)."""
    parts = list(batch.values())

    def cat(key: str) -> Tensor:
        return torch.cat([p[key] for p in parts])

    ys = tuple(cat("y"))  # the reference keeps targets as a per-sample tuple (subjects differ in voxels)
    names = np.array([s for s, p in batch.items() for _ in range(len(p["y"]))])
    n = len(names)
    return (cat("img"), cat("prev_img"), cat("prev_feats"), ys, ys, cat("bhv"), cat("prev_bhvs"),
            np.zeros(n, dtype=np.int64), names, np.arange(n))


def build(ref: SimpleNamespace, config: MemConfig, positions: dict[str, np.ndarray], batch_size: int,
          frozen: bool, tiny: bool) -> Any:
    """The reference's LightningModule for memq's ``config`` and subjects (coordinates ``positions``);
    the hub's 518 px position grid, or the input's size for memq's tiny() ViTs."""
    hub_img_size = config.DATASET.IMAGE_SIZE if tiny else HUB_IMG_SIZE
    subjects = list(positions)
    cfg = xvba_config(ref, reference_overrides(config, subjects, batch_size))
    img = config.DATASET.IMAGE_SIZE
    shapes = {
        HUB_NAMES["current"][1]: vit_shape(config.MODEL.BACKBONE, img),
        HUB_NAMES["previous"][1]: vit_shape(config.MODEL.BACKBONE_SMALL, img),
    }
    coords = {s: torch.as_tensor(p, dtype=torch.float32) for s, p in positions.items()}
    rois = {s: {"all": torch.arange(len(p))} for s, p in positions.items()}
    with random_hub(ref, shapes, hub_img_size):
        lit = bench_module(ref)(cfg, rois, coords)
    if frozen:  # as the reference's modular_train does after loading the topyneck
        lit.model.retina_mapper.requires_grad_(False)
        lit.model.layer_selector.requires_grad_(False)
    return lit


def train_samples_per_epoch(cfg: Any) -> tuple[int, str]:
    """Samples in one xvbc training epoch and how that number is reached."""
    trials = 750 * sum(s - 3 for s in NSD_SESSIONS)
    train = round(TRAIN_IMAGE_SHARE * trials)
    batch = cfg.DATAMODULE.BATCH_SIZE
    batches = int(math.ceil(train / batch) * cfg.TRAINER.LIMIT_TRAIN_BATCHES)  # Lightning's int(n * fraction)
    how = (f"{TRAIN_IMAGE_SHARE:.0%} of 750 x {sum(s - 3 for s in NSD_SESSIONS)} training sessions = ~{train:,} "
           f"train trials / batch {batch}, LIMIT_TRAIN_BATCHES {cfg.TRAINER.LIMIT_TRAIN_BATCHES} -> {batches} batches")
    return batches * batch, how


def print_projection(ref: SimpleNamespace, memq_sps: float, ref_sps: float, epochs: int | None, label: str) -> None:
    """Projected GPU-hours of the 111 xvbc jobs for both, training steps only, with the formula."""
    cfg = xvba_config(ref)
    samples, how = train_samples_per_epoch(cfg)
    epochs = epochs or cfg.TRAINER.MAX_EPOCHS
    print(f"\nprojected xvbc GPU-hours ({label}); training steps only (no validation, data loading, soups):")
    print(f"  samples/epoch = {samples:,} ({how})")
    print(f"  epochs = {epochs} (xvba.yaml MAX_EPOCHS {cfg.TRAINER.MAX_EPOCHS}; early stopping, patience "
          f"{cfg.TRAINER.CALLBACKS.EARLY_STOP.PATIENCE}, may end a job sooner: an upper bound unless --xvbc-epochs)")
    hours = {}
    for name, sps in (("memq", memq_sps), ("reference", ref_sps)):
        hours[name] = XVBC_JOBS * epochs * samples / sps / 3600
        print(f"  {name:9s} {XVBC_JOBS} jobs x {epochs} epochs x {samples:,} samples / {sps:.4g} samples/s / 3600 "
              f"= {hours[name]:,.0f} GPU-hours")
    print(f"  memq / reference = {hours['memq'] / hours['reference']:.2f}; the reference README states ~1000 "
          f"GPU-hours for xvbc, which at {ref_sps:.4g} samples/s means "
          f"{1000 * 3600 * ref_sps / (XVBC_JOBS * samples):.0f} epochs per job")


def project(ref: SimpleNamespace, rows: list[dict[str, Any]], refs: list[dict[str, Any] | None], epochs: int | None,
            tiny: bool) -> None:
    """xvbc GPU-hours of both from the row xvbc runs: most subjects, topyneck frozen, first precision."""
    pairs = [(r, f) for r, f in zip(rows, refs, strict=True) if f is not None]
    if not pairs:
        print("\nno xvbc projection: no reference row ran")
        return
    memq, theirs = max(pairs, key=lambda p: (p[0]["subjects"], p[0]["topyneck"] == "frozen", -rows.index(p[0])))
    label = f"{memq['precision']}, {memq['subjects']} subject(s), topyneck {memq['topyneck']}, batch {memq['batch']}"
    if tiny:
        label += "; tiny widths: the formula only, not a figure for the real model"
    print_projection(ref, memq["samples_per_s"], theirs["samples_per_s"], epochs, label)


def peak(row: dict[str, Any] | None) -> str:
    """A row's peak GiB: torch.cuda.max_memory_allocated over its steps; n/a on a CPU."""
    return f"{row['peak_alloc_gib']:.2f}" if row and "peak_alloc_gib" in row else "n/a"


def print_comparison(rows: list[dict[str, Any]], refs: list[dict[str, Any] | None]) -> None:
    """One line per configuration: both samples/s, memq / reference and both peaks (refs[i] None: failed)."""
    head = ["device", "precision", "subj", "topyneck", "batch", "memq samples/s", "ref samples/s", "memq/ref",
            "memq peak GiB", "ref peak GiB", "ref attention"]
    lines = []
    for r, f in zip(rows, refs, strict=True):
        ratio = f"{r['samples_per_s'] / f['samples_per_s']:.2f}" if f else "-"
        theirs = [f"{f['samples_per_s']:.1f}", ratio] if f else ["failed", ratio]
        lines.append([r["device"], r["precision"], r["subjects"], r["topyneck"], r["batch"],
                      f"{r['samples_per_s']:.1f}", *theirs, peak(r), peak(f), f["attention"] if f else "-"])
    print(table(head, lines))
    print("peak GiB: torch.cuda.max_memory_allocated over the row's steps (n/a on a CPU)")
