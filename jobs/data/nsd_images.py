"""The Algonauts 2023 PNGs (``subjXX/{training,test}_split/*_images/*_nsd-XXXXX.png``) as image source."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from jobs.data.image_store import IMAGE_SIZE, needed_ids, write_pending_images
from jobs.data.inputs import reason
from jobs.data.progress import Reporter
from memq.job import UserError

REFERENCE_JPEG_QUALITY = 95
IMAGE_JPEG_ATTR = "image_jpeg"  # images.h5 attribute: the IMAGE_JPEG switch the images were written with
_PNG = re.compile(r"(?:train|test)-\d+_nsd-(\d+)\.png")
_SPLIT_DIRS = ("training_split/training_images", "test_split/test_images")


def png_ids(directory: Path) -> dict[int, Path]:
    """{0-based 73k id: file} of the Algonauts PNGs in ``directory`` (the name's ``nsd-XXXXX`` is 0-based)."""
    return {int(m.group(1)): p for p in sorted(directory.glob("*.png")) if (m := _PNG.fullmatch(p.name))}


def challenge_images(test_dir: Path) -> np.ndarray:
    """73k ids of the challenge test images in submission order (sorted file names)."""
    if not test_dir.is_dir():
        raise UserError(
            "missing Algonauts test images",
            where=str(test_dir),
            hint="expected subjXX/test_split/test_images/test-XXXX_nsd-XXXXX.png of the challenge data",
        )
    files = sorted(test_dir.glob("*.png"))
    ids = [int(m.group(1)) for p in files if (m := _PNG.fullmatch(p.name))]
    if not ids or len(ids) != len(files):
        raise UserError("expected test-XXXX_nsd-XXXXX.png files only", where=str(test_dir))
    return np.array(ids, dtype=np.int64)


def _load_png(path: Path, size: int, jpeg_quality: int | None = None) -> np.ndarray:
    """uint8 [3, size, size]; after a JPEG round trip at ``jpeg_quality`` if given (the reference's
    images/{id}.jpeg, switch IMAGE_JPEG)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    except OSError as exc:
        raise UserError(f"not a readable image ({reason(exc)})", where=str(path)) from exc
    if jpeg_quality is not None:
        encoded = io.BytesIO()
        rgb.save(encoded, "JPEG", quality=jpeg_quality)
        with Image.open(encoded) as decoded:
            rgb = decoded.convert("RGB")
    return np.asarray(rgb).transpose(2, 0, 1)


def write_nsd_images(
    out_dir: Path,
    alg_dir: Path,
    *,
    image_size: int = IMAGE_SIZE,
    force: bool = False,
    reporter: Reporter | None = None,
    image_jpeg: str = "none",
) -> bool:
    """``out_dir/images.h5`` from the PNGs of every subject in ``alg_dir``, resized (bicubic) to
    ``image_size``; ``image_jpeg`` "q95" stores them after a JPEG round trip at quality 95."""
    quality = REFERENCE_JPEG_QUALITY if image_jpeg == "q95" else None
    found: dict[int, Path] = {}
    for subject_dir in sorted(alg_dir.glob("subj*")):
        for split in _SPLIT_DIRS:
            found.update(png_ids(subject_dir / split))
    ids = needed_ids(out_dir)
    missing = ids[~np.isin(ids, list(found))]
    if missing.size:
        raise UserError(
            f"{missing.size} images shown to the prepared subjects have no PNG, e.g. nsd-{missing[0]:05d}",
            where=str(alg_dir),
            hint="expected subjXX/training_split/training_images and subjXX/test_split/test_images",
        )

    def load(block: np.ndarray) -> np.ndarray:
        return np.stack([_load_png(found[int(i)], image_size, quality) for i in block])

    attrs = {IMAGE_JPEG_ATTR: image_jpeg}
    return write_pending_images(out_dir, image_size, load, force=force, reporter=reporter, attrs=attrs)
