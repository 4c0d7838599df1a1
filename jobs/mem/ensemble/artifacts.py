"""The files of a trained job's soups and predictions (their places: memq.job.soup_path and
prediction_dir, from memq.paths, the one module that spells the root's layout).

    <root>/soups/<grid>/<job>/<recipe>.pt                  trainable state dict, float32
    <root>/soups/<grid>/<job>/<recipe>.json                what it was made of, and its scores
    <root>/predictions/<grid>/<job>/<recipe>/<split>/
        subjXX.npy       float16 [n_trials, n_model_voxels]: row i = trial trials[i], column j = voxel voxels[j]
        index.npz        subjXX.trials, subjXX.voxels (int64): split trials, and the model's voxel positions
                         in the subject's full voxel list (ROI order; every voxel for a whole-brain model)
        manifest.json    written last: the soup it came from, and the size and sha256 of every file

Every file is published atomically; readers verify the sha256 of what they read.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from memq.job import ChecksumError, sha256_file, write_atomically, write_text_atomically

MANIFEST, INDEX = "manifest.json", "index.npz"
_HEADERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}


def remove_temporaries(directory: Path, names: Iterable[str] | None = None) -> None:
    """Delete the temporary files (memq.files.temp_path) that killed writers of ``names`` (default:
    any) left in ``directory`` and its subdirectories, so that a rerun ends with exactly the files
    of an uninterrupted run. Only where no other live process writes those names."""
    name = "|".join(map(re.escape, names)) if names is not None else ".+"
    temporary = re.compile(rf"\.(?:{name})\.\d+\.[0-9a-f]{{8}}\.tmp")
    for path in [*directory.glob(".*.tmp"), *directory.glob("*/.*.tmp")]:
        if temporary.fullmatch(path.name):
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class SubjectPrediction:
    """One model's predictions of one subject's split, as a manifest lists them."""

    subject: str
    path: Path
    size: int
    sha256: str
    trials: np.ndarray
    voxels: np.ndarray


def _file_entry(path: Path) -> dict[str, Any]:
    return {"file": path.name, "size": path.stat().st_size, "sha256": sha256_file(path)}


def write_subject(directory: Path, subject: str, values: np.ndarray) -> dict[str, Any]:
    """Publish ``subjXX.npy`` (float16, C order: readers stream it by rows); returns its manifest entry."""
    return write_subject_rows(directory, subject, values.shape, [values])


def write_subject_rows(directory: Path, subject: str, shape: tuple[int, ...], blocks: Iterable[np.ndarray],
                       ) -> dict[str, Any]:
    """:func:`write_subject` of a ``shape`` matrix given as blocks of its rows, in order, holding one
    block at a time; the bytes are np.save's."""

    def write(tmp: Path) -> None:
        rows = 0
        with tmp.open("wb") as fh:
            header = {"descr": npy_format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
                      "shape": tuple(shape)}
            npy_format.write_array_header_1_0(fh, header)
            for block in blocks:
                block = np.ascontiguousarray(block, dtype=np.float16)
                if block.shape[1:] != tuple(shape[1:]):
                    raise ValueError(f"{subject}: rows of shape {block.shape[1:]}, expected {shape[1:]}")
                fh.write(block.tobytes())
                rows += len(block)
        if rows != shape[0]:
            raise ValueError(f"{subject}: {rows} rows written, expected {shape[0]}")

    return _file_entry(write_atomically(directory / f"{subject}.npy", write))


def save_npy(path: Path, values: np.ndarray) -> None:
    """``np.save`` to exactly ``path`` (np.save appends .npy to other names, e.g. temporary ones)."""
    with path.open("wb") as fh:
        np.save(fh, values)


def write_index(directory: Path, index: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Publish ``index.npz`` from subject -> (trials, voxels); returns its manifest entry."""
    arrays = {}
    for subject in sorted(index):
        trials, voxels = index[subject]
        arrays[f"{subject}.trials"] = np.asarray(trials, dtype=np.int64)
        arrays[f"{subject}.voxels"] = np.asarray(voxels, dtype=np.int64)

    def save(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            np.savez(fh, **arrays)

    return _file_entry(write_atomically(directory / INDEX, save))


def write_manifest(directory: Path, manifest: Mapping[str, Any]) -> None:
    write_text_atomically(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a finished prediction directory, or None if there is none (yet)."""
    try:
        return json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        return None


def verified(directory: Path, manifest: Mapping[str, Any]) -> bool:
    """True when every file the manifest lists has its size and sha256."""
    entries = [manifest["index"], *manifest["subjects"].values()]
    for entry in entries:
        path = directory / entry["file"]
        if not path.is_file() or path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            return False
    return True


def read_predictions(directory: Path) -> list[SubjectPrediction]:
    """The subjects of a prediction directory (sorted), with their index arrays (checksum verified)."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise FileNotFoundError(f"{directory}: no {MANIFEST} (the predict job has not finished)")
    entry = manifest["index"]
    data = (directory / entry["file"]).read_bytes()
    if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ChecksumError(f"{directory / entry['file']}: does not match its manifest")
    with np.load(io.BytesIO(data)) as index:
        return [
            SubjectPrediction(subject, directory / e["file"], e["size"], e["sha256"],
                              index[f"{subject}.trials"], index[f"{subject}.voxels"])
            for subject, e in sorted(manifest["subjects"].items())
        ]  # fmt: skip


class _Hashing:
    """A binary file whose every read feeds a sha256."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.digest, self.size = fh, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data


def stream_rows(part: SubjectPrediction, rows: int) -> Iterator[np.ndarray]:
    """The float16 rows of a prediction file, ``rows`` at a time, read once.

    The file's sha256 is checked as it is read: ChecksumError after the last block if it does not
    match, so a caller publishes nothing it computed from bad bytes.
    """
    with part.path.open("rb") as raw:
        fh = _Hashing(raw)
        version = npy_format.read_magic(fh)  # type: ignore[arg-type]
        if version not in _HEADERS:
            raise ChecksumError(f"{part.path}: .npy format version {version}, expected 1.0 or 2.0")
        shape, fortran, dtype = _HEADERS[version](fh)
        expected = (len(part.trials), len(part.voxels))
        if shape != expected or fortran or dtype != np.float16:
            order = "Fortran" if fortran else "C"
            raise ChecksumError(f"{part.path}: {dtype} {list(shape)} in {order} order, expected float16 "
                                f"{list(expected)} in C order")
        n_rows, n_cols = shape
        for start in range(0, n_rows, rows):
            count = min(rows, n_rows - start)
            block = np.frombuffer(fh.read(2 * count * n_cols), dtype=np.float16)
            if block.size != count * n_cols:
                raise ChecksumError(f"{part.path}: truncated")
            yield block.reshape(count, n_cols)
        fh.read()
        if fh.size != part.size or fh.digest.hexdigest() != part.sha256:
            raise ChecksumError(f"{part.path}: sha256 {fh.digest.hexdigest()[:12]}... does not match its manifest")
