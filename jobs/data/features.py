"""`memq data cache-features`: the memory-image features in ``images.h5`` (mem-spec 1.3).

The DINOv2 ViT-L/14 CLS token after the final LayerNorm (timm ``vit_large_patch14_dinov2.lvd142m``,
``num_classes=0``) of every stored image, ImageNet-normalised at 224 x 224, stored as float16.
Weights are the ones installed on the memq root under a name (``dinov2_vitl14`` by default, see
`memq data weights`), verified by sha256; random weights only when asked for (``random``: tests).

Batches are appended to ``.images.h5.features.partial.h5`` beside the store, so a killed run
resumes where it stopped; at the end a copy of ``images.h5`` with the new features replaces it
atomically. Also the job kind ``data.cache_features`` (params data_dir, weights, model,
image_size, batch_size, device, alg_dir, force), which first writes ``images.h5`` from the
Algonauts PNGs if it is missing and ``alg_dir`` is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from jobs.compat import data_switch_values
from jobs.data.amend import rewrite
from jobs.data.inputs import reason
from jobs.data.layout import FEATURES_SOURCE, IMAGES_FILE, open_images
from jobs.data.nsd_images import write_nsd_images
from jobs.data.params import CACHE_FEATURES_SWITCHES, FEATURE_MODEL, FEATURE_WEIGHTS
from jobs.data.progress import JobReporter, Reporter
from jobs.weights.manifest import Entry, WeightsError, resolve
from memq.job import UserError

if TYPE_CHECKING:
    from memq.job import JobContext

FEATURE_IMAGE_SIZE = 224
BATCH_SIZE = 64
RANDOM_SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _installed(weights: str, root: Path | None, model_name: str) -> Entry | None:
    """The installed entry the weights name, None for ``random``."""
    try:
        return resolve(root, "weights", weights, model_name)
    except WeightsError as exc:
        raise UserError(str(exc)) from None


def _build_model(name: str, image_size: int, weights: str, root: Path | None) -> torch.nn.Module:
    """The frozen feature model in eval mode, with the installed ``weights`` (verified) or random ones."""
    import timm

    from jobs.weights.load import load_pretrained

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = timm.create_model(name, pretrained=False, num_classes=0, img_size=image_size)
        load_pretrained(model, weights, "weights", name, root)
    except WeightsError as exc:
        raise UserError(str(exc)) from None
    except RuntimeError as exc:  # unknown model names
        raise UserError(f"cannot build {name} ({reason(exc)})", where=name) from exc
    return model.eval().requires_grad_(False)


def _fingerprint(name: str, image_size: int, entry: Entry | None) -> str:
    source = f"{entry.name} sha256 {entry.sha256}" if entry is not None else f"random init (seed {RANDOM_SEED})"
    return f"timm {name} at {image_size}px, {source}"


def _partial(path: Path, ids: np.ndarray, dim: int, fingerprint: str) -> h5py.File:
    """The work file of a run with these images and this model, resumed if a killed run left one."""
    try:
        f = h5py.File(path, "a")
    except OSError:  # unreadable: a writer was killed mid-flush
        path.unlink()
        f = h5py.File(path, "a")
    same = f.attrs.get("fingerprint") == fingerprint and "ids" in f and np.array_equal(f["ids"][()], ids)
    if not same:
        f.close()
        f = h5py.File(path, "w")
        f.attrs.update(fingerprint=fingerprint, n_done=0)
        f.create_dataset("ids", data=ids)
        f.create_dataset("features", shape=(ids.size, dim), dtype=np.float16, chunks=(1, dim))
    return f


def _prepare(images: np.ndarray, image_size: int, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(images).to(device).float().div_(255)
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def cache_features(
    data_dir: Path,
    *,
    weights: str = FEATURE_WEIGHTS,
    root: Path | None = None,
    model_name: str = FEATURE_MODEL,
    image_size: int = FEATURE_IMAGE_SIZE,
    batch_size: int = BATCH_SIZE,
    device: str | None = None,
    alg_dir: Path | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
    image_jpeg: str = "none",
) -> bool:
    """Compute and store the features of every image of ``data_dir/images.h5``; False if already done.

    ``weights`` names weights installed on the memq ``root``, or is ``random``. With ``alg_dir``,
    a missing ``images.h5`` is first written from the Algonauts PNGs there (``image_jpeg``: switch
    IMAGE_JPEG of jobs/compat.py).
    """
    reporter = reporter or Reporter()
    path = data_dir / IMAGES_FILE
    if alg_dir is not None and not path.exists():
        write_nsd_images(data_dir, alg_dir, reporter=reporter, image_jpeg=image_jpeg)
    fingerprint = _fingerprint(model_name, image_size, _installed(weights, root, model_name))
    with open_images(path) as f:
        ids, done_by = f.ids, f.file.attrs.get(FEATURES_SOURCE)
    if done_by == fingerprint and not force:
        reporter.note(f"{path}: features of {fingerprint} are there, skipped (--force recomputes them)")
        return False
    model = _build_model(model_name, image_size, weights, root).to(torch.device(device or _default_device()))
    dev = next(model.parameters()).device
    partial_path = path.with_name(f".{IMAGES_FILE}.features.partial.h5")
    with open_images(path) as store, _partial(partial_path, ids, model.num_features, fingerprint) as work:
        start = int(work.attrs["n_done"])
        if start:
            reporter.note(f"resuming after {start} of {ids.size} images ({partial_path.name})")
        with reporter.task("memory features", ids.size) as advance, torch.inference_mode():
            advance(start)
            for lo in range(start, ids.size, batch_size):
                hi = min(lo + batch_size, ids.size)
                features = model(_prepare(store.images[lo:hi], image_size, dev))
                work["features"][lo:hi] = features.float().cpu().numpy().astype(np.float16)
                work.attrs["n_done"] = hi
                work.flush()
                advance(hi - lo)

    def put_features(out: h5py.File) -> None:
        with h5py.File(partial_path, "r") as work:
            work.copy(work["features"], out, "features")
        out.attrs.update({"feature_dim": model.num_features, FEATURES_SOURCE: fingerprint})

    rewrite(path, put_features, skip={"features"})
    partial_path.unlink()
    reporter.note(f"{path}: {ids.size} features ({model.num_features}-d) of {fingerprint}")
    return True


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run(ctx: JobContext) -> None:
    """Job kind ``data.cache_features``."""
    p = ctx.params
    cache_features(
        Path(p["data_dir"]),
        weights=p.get("weights", FEATURE_WEIGHTS),
        root=ctx.root,
        model_name=p.get("model", FEATURE_MODEL),
        image_size=int(p.get("image_size", FEATURE_IMAGE_SIZE)),
        batch_size=int(p.get("batch_size", BATCH_SIZE)),
        device=p.get("device"),
        alg_dir=Path(p["alg_dir"]) if p.get("alg_dir") else None,
        force=bool(p.get("force", False)),
        reporter=JobReporter(ctx),
        image_jpeg=data_switch_values(p, CACHE_FEATURES_SWITCHES)["IMAGE_JPEG"],
    )
