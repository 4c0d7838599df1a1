"""Training-step throughput of the full Mem model (jobs.mem.model.MemModel + jobs.mem.train.lit.MemLit).

Builds the model from the jobs.mem.config defaults (DINOv2 ViT-B/14 for T=0, ViT-S/14 for T=-1,
random init: no weights are read or downloaded) and runs N warm-up + M timed optimiser steps
through a real Lightning Trainer (autocast + GradScaler for fp16, gradient clipping, AdamW) on
synthetic in-memory batches of real shapes that are already on the device, so the figures are
the model's step alone, without the data loader or the host-to-device copy.

Batches: ``--batch`` samples (32) split evenly over 1 or 8 subjects, each subject with
``--voxels`` voxels (40,000) of which MAX_TRAIN_VOXELS (25,600) are sampled per step; images
224 px, 31 memory frames x 1024, behaviour 35. Each configuration is run with the topyneck
(RetinaMapper + LayerSelector) trainable and frozen (``model.freeze_topyneck()``), as the xvbc
grid runs it.

    python bench/mem_train_step.py                    # on a GPU: fp16 and bf16, 1 and 8 subjects
    python bench/mem_train_step.py --tiny             # CPU smoke check with jobs.mem.config.tiny()
    python bench/mem_train_step.py --profile          # also a torch.profiler table of a few steps
    python bench/mem_train_step.py --reference DIR    # and the reference's step, side by side
    python bench/mem_train_step.py --compile          # and memq's step with torch.compile, side by side

Prints one table row per configuration: device, precision, subjects, topyneck, batch,
samples/s, ms/step, peak GPU memory (torch.cuda.max_memory_allocated; n/a on a CPU).

``--compile`` adds, per configuration, memq's step with the model's forward compiled
(``torch.compile`` of ``MemModel.forward_subjects``, inductor, static shapes; the warm-up steps
absorb the compilation) and prints its gain. mem.train compiles nothing: a candidate speed-up
enters training only once this bench shows a gain on a GPU with the same loss (issue 19). Fused
AdamW is no candidate: Lightning refuses gradient clipping with an optimizer that unscales its own
gradients, and the recipe clips at TRAINER.GRADIENT_CLIP_VAL (0.5, as the reference). A row whose
loss was not finite (its optimizer steps skipped) fails instead of printing a figure.

``--reference DIR`` (a clone of huzeyann/MemoryEncodingModel, never part of memq) also times the
reference's own LightningModule per row on the same batch, widths, precision and Lightning settings
(bench/_reference_step.py: what it changes to run on PL 2 with nothing downloaded) and prints both
samples/s, the ratio, both peaks and the projected xvbc GPU-hours of both; its packages are in
bench/requirements.txt. Full GPU comparison (16 timed rows): about 5 minutes on one H100 (an
estimate, not yet run on a GPU); --tiny (2 + 6 steps a row): 40 s on 2 free CPU cores, 5 min busy.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from bench import _reference_step as refstep  # noqa: E402
from bench._common import start_together, table  # noqa: E402
from jobs.mem.config import RANDOM_BACKBONES, MemConfig, load_config, tiny  # noqa: E402
from jobs.mem.model import MemModel  # noqa: E402
from jobs.mem.subject import SubjectInfo  # noqa: E402
from jobs.mem.train.lit import MemLit  # noqa: E402

BEHAVIOUR_DIM = 35


def make_batch(
    config: MemConfig, subjects: list[str], batch: int, n_voxels: int, device: torch.device, gen: torch.Generator
) -> dict[str, dict[str, Tensor]]:
    """A collate_by_subject-shaped batch of ``batch`` samples spread evenly over ``subjects``."""
    size, n_prev, feat = config.DATASET.IMAGE_SIZE, config.DATASET.N_PREV_FRAMES, config.MODEL.PREV_FEAT.DIM
    counts = [batch // len(subjects) + (i < batch % len(subjects)) for i in range(len(subjects))]
    out = {}
    for subject, b in zip(subjects, counts, strict=True):
        if b == 0:
            continue
        fields = {
            "img": torch.randn(b, 3, size, size, generator=gen),
            "prev_img": torch.randn(b, 3, size, size, generator=gen),
            "prev_feats": torch.randn(b, n_prev - 1, feat, generator=gen),
            "bhv": torch.randn(b, BEHAVIOUR_DIM, generator=gen),
            "prev_bhvs": torch.randn(b, n_prev, BEHAVIOUR_DIM, generator=gen),
            "y": torch.randn(b, n_voxels, generator=gen),
            "index": torch.arange(b),
        }
        out[subject] = {k: v.to(device) for k, v in fields.items()}
    return out


class SameBatch(Dataset[Any]):
    """The same prebuilt batch ``n`` times (DataLoader with batch_size=None)."""

    def __init__(self, batch: Any, n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return self.batch


class StepTimer(L.Callback):
    """Wall time from the end of the last warm-up step to the end of the last timed step
    (device synchronised at both ends only, so steps overlap as in training)."""

    def __init__(self, warmup: int, steps: int, device: torch.device, profile_steps: int = 0) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.t0 = self.t1 = 0.0
        self.profile_steps = profile_steps
        self.profiler: torch.profiler.profile | None = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.warmup - 1:
            self._sync()
            start_together()  # bench/mem_shared_gpu.py: jobs sharing a GPU time the same seconds
            self.t0 = time.perf_counter()
            if self.profile_steps:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if self.device.type == "cuda":
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                self.profiler = torch.profiler.profile(activities=activities)
                self.profiler.start()
        elif batch_idx == self.warmup + self.steps - 1:
            self._sync()
            self.t1 = time.perf_counter()
            if self.profiler is not None:
                self.profiler.stop()


class ForwardBreakdown:
    """CUDA-event (or wall-clock on CPU) forward time of the model's parts, via module hooks."""

    def __init__(self, model: MemModel, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, list[float]] = {}
        self.handles = []
        parts = {
            "current.backbone (ViT-B)": [model.current.backbone],
            "current.conv_heads": list(model.current.conv_heads),
            "current.cls_heads": list(model.current.cls_heads),
            "previous (ViT-S + head)": [model.previous],
            "memory branch": [model.memory],
            "retina_mapper": list(model.retina_mapper.values()),
            "layer_selector": list(model.layer_selector.values()),
            "readout weights gather": list(model.readout.values()),
        }
        for name, modules in parts.items():
            for module in modules:
                self.handles.append(module.register_forward_pre_hook(self._start(name)))
                self.handles.append(module.register_forward_hook(self._stop(name)))
        self.pending: dict[str, Any] = {}

    def _now(self) -> Any:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _start(self, name: str) -> Any:
        def hook(module: torch.nn.Module, args: Any) -> None:
            self.pending[name] = self._now()

        return hook

    def _stop(self, name: str) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            self.times.setdefault(name, []).append((self.pending.pop(name), self._now()))  # type: ignore[arg-type]

        return hook

    def summary(self, n_steps: int) -> dict[str, float]:
        """Milliseconds per step of each part's forward."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        out = {}
        for name, pairs in self.times.items():
            if self.device.type == "cuda":
                total = sum(a.elapsed_time(b) for a, b in pairs)
            else:
                total = sum(b - a for a, b in pairs) * 1000
            out[name] = total / n_steps
        return out

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def run_one(
    args: argparse.Namespace, device: torch.device, precision: str, n_subjects: int, frozen: bool,
    profile: bool = False, breakdown: bool = False, ref: Any = None, compiled: bool = False,
) -> dict[str, Any]:
    """Time memq's training step for one configuration, or the reference's (``ref``) on the same batch."""
    overrides: dict[str, Any] = dict(tiny()) if args.tiny else dict(RANDOM_BACKBONES)  # speed: weights irrelevant
    overrides["TRAINER.PRECISION"] = precision
    config = load_config(overrides)
    if device.type == "cuda":
        torch.set_float32_matmul_precision(config.TRAINER.MATMUL_PRECISION)  # as jobs.mem.train.fit does
    batch_size = args.batch or config.TRAINER.BATCH_SIZE
    n_voxels = args.voxels or (40_000 if not args.tiny else 300)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    subjects = [f"subj{i + 1:02d}" for i in range(n_subjects)]
    positions = {s: rng.normal(size=(n_voxels, 3)).astype(np.float32) * 50 for s in subjects}
    gen = torch.Generator().manual_seed(1)
    batch: Any = make_batch(config, subjects, batch_size, n_voxels, device, gen)
    t_build = time.perf_counter()
    if ref is None:
        pl: Any = L
        model = MemModel(config, {s: SubjectInfo(p) for s, p in positions.items()})
        if frozen:
            model.freeze_topyneck()
        lit = MemLit(config, model)
        if compiled:  # the instance attribute shadows the method that MemLit's steps call
            model.forward_subjects = torch.compile(model.forward_subjects, dynamic=False)  # type: ignore[method-assign]
    else:
        import pytorch_lightning as pl  # the reference's Lightning package

        lit = refstep.build(ref, config, positions, batch_size, frozen, args.tiny)
        model, batch = lit.model, refstep.reference_batch(batch)
    t_build = time.perf_counter() - t_build
    warmup, steps = args.warmup, (args.profile_steps if profile else args.steps)
    timer_class = StepTimer if pl is L else type("RefStepTimer", (StepTimer, pl.Callback), {})
    timer = timer_class(warmup, steps, device, profile_steps=steps if profile else 0)
    loader = DataLoader(SameBatch(batch, warmup + steps), batch_size=None, num_workers=0)
    parts = ForwardBreakdown(model, device) if breakdown else None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(  # memq's and the reference's step: the same Lightning settings
            accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision,
            gradient_clip_val=config.TRAINER.GRADIENT_CLIP_VAL,
            accumulate_grad_batches=config.TRAINER.ACCUMULATE_GRAD_BATCHES, max_epochs=1, limit_val_batches=0,
            num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=root, callbacks=[timer],
        )
        trainer.fit(lit, train_dataloaders=loader)
    skipped = warmup + steps - trainer.global_step
    if ref is None and skipped:  # MemLit skips the optimizer step of a non-finite loss: no figure to time
        raise RuntimeError(f"{skipped} of {warmup + steps} optimizer steps skipped (non-finite loss)")
    seconds = timer.t1 - timer.t0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result: dict[str, Any] = {
        "model": "reference" if ref is not None else "memq (compiled)" if compiled else "memq",
        "device": device_name(device), "precision": precision,
        "matmul_precision": config.TRAINER.MATMUL_PRECISION if device.type == "cuda" else "n/a (CPU)",
        "subjects": n_subjects,
        "voxels_per_subject": n_voxels,
        "sampled_voxels": min(n_voxels, config.MODEL.MAX_TRAIN_VOXELS),
        "topyneck": "frozen" if frozen else "trainable",
        "batch": batch_size,
        "warmup": warmup, "steps": steps,
        "samples_per_s": batch_size * steps / seconds,
        "ms_per_step": 1000 * seconds / steps,
        "build_s": t_build,
        "trainable_params": trainable,
        "total_params": sum(p.numel() for p in model.parameters()),
        **({} if ref is None else {"attention": ref.attention}),
    }
    if device.type == "cuda":
        result["peak_alloc_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    if parts is not None:
        # hooks fire on every step, warm-up included
        result["forward_ms"] = parts.summary(warmup + steps)
        parts.remove()
    if timer.profiler is not None:
        result["profiler"] = timer.profiler
    del trainer, lit, model, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ["model", "device", "precision", "subj", "topyneck", "batch", "samples/s", "ms/step", "peak alloc GiB",
            "trainable params"]
    lines = [[r["model"], r["device"], r["precision"], r["subjects"], r["topyneck"], r["batch"],
              f"{r['samples_per_s']:.1f}", f"{r['ms_per_step']:.1f}", refstep.peak(r), f"{r['trainable_params']:,}"]
             for r in rows]
    print(table(head, lines))


def run_logged(
    args: argparse.Namespace, device: torch.device, precision: str, n_subjects: int, frozen: bool, ref: Any = None,
    compiled: bool = False,
) -> dict[str, Any] | None:
    """run_one with a progress line; None (and the error printed) when the row failed, e.g. out of memory."""
    who = "reference" if ref is not None else "memq (compiled)" if compiled else "memq"
    mode = "frozen" if frozen else "trainable"
    try:
        r = run_one(args, device, precision, n_subjects, frozen, ref=ref, compiled=compiled)
    except Exception as error:  # report it and go on with the next row
        print(f"  {who} {precision} subjects={n_subjects} topyneck={mode}: FAILED {type(error).__name__}: {error}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None
    print(
        f"  {who} {precision} subjects={n_subjects} topyneck={mode}: {r['samples_per_s']:.1f} samples/s, "
        f"{r['ms_per_step']:.1f} ms/step, peak {refstep.peak(r)} GiB, {r['trainable_params']:,} trainable params",
        flush=True,
    )
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="jobs.mem.config.tiny() model (CPU smoke check)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", help="comma list; default 16-mixed,bf16-mixed on a GPU, 32-true on a CPU")
    parser.add_argument("--subjects", default="1,8", help="comma list of subject counts per batch")
    parser.add_argument("--topyneck", default="trainable,frozen", help="comma list: trainable, frozen")
    parser.add_argument("--voxels", type=int, default=0, help="voxels per subject (default 40000; tiny 300)")
    parser.add_argument("--batch", type=int, default=0, help="batch size (default TRAINER.BATCH_SIZE)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps per row (5; tiny 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (20; tiny 6)")
    parser.add_argument("--reference", metavar="DIR", help="a clone of huzeyann/MemoryEncodingModel: its step too")
    parser.add_argument(
        "--ref-attention", default="auto", choices=["auto", "plain"],
        help="reference DINOv2 attention without xformers: auto = SDPA stand-in, plain = dinov2's own fallback",
    )
    parser.add_argument("--compile", action="store_true",
                        help="also time memq's step with torch.compile of the model's forward, and its gain")
    parser.add_argument("--xvbc-epochs", type=int, default=None, help="epochs per xvbc job (default MAX_EPOCHS)")
    parser.add_argument("--profile", action="store_true",
                        help="after the table: torch.profiler of the first configuration + forward breakdown")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for results JSON / profile")
    args = parser.parse_args()
    args.warmup = (2 if args.tiny else 5) if args.warmup is None else args.warmup
    args.steps = (6 if args.tiny else 20) if args.steps is None else args.steps

    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "dinov2"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    ref = refstep.import_reference(args.reference) if args.reference else None  # fails first, in one line
    if ref:
        refstep.set_attention(ref, args.ref_attention)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if args.device == "cuda" and not cuda:
        sys.exit("no CUDA device")
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    precisions = (args.precision or ("16-mixed,bf16-mixed" if cuda else "32-true")).split(",")
    subject_counts = [int(s) for s in args.subjects.split(",")]
    frozen_modes = [{"trainable": False, "frozen": True}[m] for m in args.topyneck.split(",")]
    print(
        f"torch {torch.__version__}, lightning {L.__version__}, timm {timm.__version__}, "
        f"python {platform.python_version()}; device {device_name(device)}"
        + (f", CUDA {torch.version.cuda}, capability {torch.cuda.get_device_capability(device)}" if cuda else "")
    )
    model = "tiny() overrides" if args.tiny else "jobs.mem.config defaults (ViT-B/14 + ViT-S/14, random init)"
    steps = f"warm-up {args.warmup} + timed {args.steps} optimiser steps per row; batch already on the device"
    print(f"model: {model}; {steps}", flush=True)

    rows: list[dict[str, Any]] = []
    refs: list[dict[str, Any] | None] = []
    compiled_rows: list[dict[str, Any]] = []
    for precision, n_subjects, frozen in itertools.product(precisions, subject_counts, frozen_modes):
        result = run_logged(args, device, precision, n_subjects, frozen)
        if result is None:
            continue
        rows.append(result)
        if ref is not None:
            refs.append(run_logged(args, device, precision, n_subjects, frozen, ref))
        if args.compile:
            compiled = run_logged(args, device, precision, n_subjects, frozen, compiled=True)
            if compiled is not None:
                gain = compiled["samples_per_s"] / result["samples_per_s"]
                print(f"  torch.compile gain: {gain:.2f}x ({result['samples_per_s']:.1f} -> "
                      f"{compiled['samples_per_s']:.1f} samples/s)", flush=True)
                compiled_rows.append(compiled)
    print()
    if ref is None:
        print_table(rows + compiled_rows)
    else:
        refstep.print_comparison(rows, refs)
        refstep.project(ref, rows, refs, args.xvbc_epochs, args.tiny)
        if compiled_rows:
            print_table(compiled_rows)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "mem_train_step.json").write_text(json.dumps(rows + compiled_rows + [r for r in refs if r], indent=2))

    if args.profile:
        precision, n_subjects, frozen = precisions[0], subject_counts[0], frozen_modes[-1]
        mode = "frozen" if frozen else "trainable"
        print(f"\nforward breakdown ({precision}, {n_subjects} subject(s), topyneck {mode}; forward only, ms/step):")
        result = run_one(args, device, precision, n_subjects, frozen, breakdown=True)
        for name, ms in sorted(result["forward_ms"].items(), key=lambda kv: -kv[1]):
            print(f"  {name:28s} {ms:8.2f}")
        print(f"  (whole step {result['ms_per_step']:.1f} ms incl. backward + optimiser, hooks synchronise nothing)")
        result = run_one(args, device, precision, n_subjects, frozen, profile=True)
        prof = result.pop("profiler")
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        try:
            report = prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60)
        except (AttributeError, KeyError):
            key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
            report = prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60)
        print(f"\ntorch.profiler, {args.profile_steps} steps, sorted by {key}:")
        print(report)
        if out:
            (out / "mem_train_step_profile.txt").write_text(report)


if __name__ == "__main__":
    main()
