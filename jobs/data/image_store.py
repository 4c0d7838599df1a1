"""Writing ``images.h5`` for the prepared subjects of a directory, from any image source.

Every image a subject's memory windows show is stored once; the features stay "pending" (zeros)
until ``memq data cache-features`` computes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from jobs.data.layout import (
    BLANK,
    FEATURES_PENDING,
    FEATURES_SOURCE,
    IMAGES_FILE,
    ImageWriter,
    LayoutError,
    open_images,
    open_subject,
    subject_files,
)
from jobs.data.progress import Reporter
from memq.job import UserError

IMAGE_SIZE = 224
PENDING_FEATURE_DIM = 1024  # DINOv2 ViT-L/14; cache-features sets the real width
BLOCK = 64


def needed_ids(out_dir: Path) -> np.ndarray:
    """Sorted 73k ids shown in any prepared subject's memory windows (subject files of every space)."""
    ids = [np.empty(0, dtype=np.int64)]
    for path in subject_files(out_dir):
        with open_subject(path) as f:
            ids.append(np.unique(f.memory_index()))
    merged = np.unique(np.concatenate(ids))
    return merged[merged != BLANK]


def write_pending_images(
    out_dir: Path,
    image_size: int,
    load: Callable[[np.ndarray], np.ndarray],
    *,
    force: bool = False,
    reporter: Reporter | None = None,
    attrs: Mapping[str, str] | None = None,
) -> bool:
    """Write ``out_dir/images.h5``; ``load(ids)`` gives uint8 [n, 3, size, size] for sorted ids.

    ``attrs`` (how the images were made) are stored; False (nothing written) if the store already
    holds every needed image at this size, made the same way (an absent attribute counts as
    ``"none"``, the value of stores written before it was recorded).
    """
    attrs = dict(attrs or {})
    reporter = reporter or Reporter()
    ids = needed_ids(out_dir)
    path = out_dir / IMAGES_FILE
    if ids.size == 0:
        raise UserError("no prepared subject here", where=str(out_dir), hint="prepare the subjects first")
    if path.is_file() and not force:
        try:
            with open_images(path) as f:
                same = all(f.file.attrs.get(k, "none") == v for k, v in attrs.items())
                if same and f.image_size == image_size and np.isin(ids, f.ids).all():
                    reporter.note(f"{path}: holds every image of the prepared subjects, skipped")
                    return False
        except LayoutError:
            pass
    attrs[FEATURES_SOURCE] = FEATURES_PENDING
    with (
        reporter.task("images", ids.size) as advance,
        ImageWriter(path, ids, image_size, PENDING_FEATURE_DIM, attrs=attrs) as writer,
    ):
        for start in range(0, ids.size, BLOCK):
            block = ids[start : start + BLOCK]
            writer.append(load(block), np.zeros((block.size, PENDING_FEATURE_DIM), dtype=np.float16))
            advance(block.size)
    reporter.note(f"{path}: {ids.size} images; features pending (run `memq data cache-features`)")
    return True
