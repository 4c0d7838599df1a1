"""`memq data weights`: put pretrained weights on the shared root once, with their sha256.

The source is a local file (``--file``: safetensors, or a torch state dict read with
``weights_only=True``) or timm's Hugging Face repository of the model, through the Hugging Face
cache (downloaded into it when the hub can be reached; ``HF_HUB_OFFLINE=1`` reads the cache only).
Torch files are stored as safetensors, so every load parses safetensors. The manifest is rewritten
atomically under memq's lease lock (two nodes may install at once).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from jobs.data.progress import Reporter
from jobs.weights.manifest import (
    CATALOGUE,
    NAME,
    RANDOM,
    Entry,
    manifest_path,
    manifest_text,
    read_manifest,
    weights_dir,
)
from memq.job import UserError

HUB_FILE = "model.safetensors"  # timm's weights in its Hugging Face repositories
CHUNK = 1 << 22


def _model_of(name: str, model: str | None) -> str:
    known = CATALOGUE.get(name)
    if known is not None:
        if model is not None and model != known.model:
            raise UserError(f"{name} is {known.model}, not {model}", where="--model", hint="leave --model out")
        return known.model
    if model is None:
        raise UserError(
            f"{name} is not one of {', '.join(CATALOGUE)}: say which timm model the weights are for",
            where="--model",
            hint=f"memq data weights {name} --file FILE --model vit_base_patch14_dinov2",
        )
    return model


def _from_hub(model: str) -> tuple[Path, str]:
    """The model's weights file in the Hugging Face cache, fetched into it if the hub can be reached."""
    import timm
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cfg = timm.models.get_pretrained_cfg(model)
    repo = cfg.hf_hub_id if cfg is not None else None
    if not repo:
        raise UserError(f"timm has no Hugging Face weights for {model}", where=model, hint="give --file FILE")
    try:
        return Path(hf_hub_download(repo, HUB_FILE)), f"hf://{repo}/{HUB_FILE}"
    except LocalEntryNotFoundError:
        raise UserError(
            f"{repo}/{HUB_FILE} is not in the Hugging Face cache and the hub cannot be reached",
            where=model,
            hint="run this where there is internet (the weights then sit on the shared root), or give --file FILE",
        ) from None


def _shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], bytes | None]:
    """The tensor shapes of a weights file, and its safetensors bytes when it has to be converted."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as f:
                return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}, None  # noqa: SIM118
        except (SafetensorError, OSError) as exc:
            raise UserError(f"not a safetensors file ({exc})", where=str(path)) from None
    import pickle

    import torch
    from safetensors.torch import save

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        raise UserError(f"not a torch state dict readable with weights_only=True ({exc})", where=str(path)) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError("not a flat state dict of tensors", where=str(path))
    return {k: tuple(v.shape) for k, v in state.items()}, save({k: v.contiguous() for k, v in state.items()})


def _check_fits(name: str, shapes: dict[str, tuple[int, ...]], source: Path) -> None:
    """A catalogue name gets a ViT of its width (a ViT-S file installed as ViT-B fails here, not in 111 jobs)."""
    known = CATALOGUE.get(name)
    if known is None:
        return
    width = shapes.get("cls_token", (None,))[-1]
    if width != known.width:
        raise UserError(f"{name} needs {known.model} weights (cls_token width {known.width}), this file has "
                        f"{'no cls_token' if width is None else f'width {width}'}", where=str(source))


def _chunks(path: Path, converted: bytes | None) -> Iterator[bytes]:
    if converted is not None:
        for start in range(0, len(converted), CHUNK):
            yield converted[start : start + CHUNK]
        return
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            yield block


def _store(root: Path, name: str, source: Path, converted: bytes | None, reporter: Reporter) -> tuple[str, str, int]:
    """Write the weights under a content name; returns (file name, sha256, size)."""
    from memq.job import fsync_path, temp_path

    directory = weights_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(directory / name)
    digest, size = hashlib.sha256(), 0
    total = len(converted) if converted is not None else source.stat().st_size
    try:
        with tmp.open("wb") as out, reporter.task(f"{name}: copying", total) as advance:
            for block in _chunks(source, converted):
                out.write(block)
                digest.update(block)
                size += len(block)
                advance(len(block))
        fsync_path(tmp)
        file = f"{name}.{digest.hexdigest()[:16]}.safetensors"
        os.replace(tmp, directory / file)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(directory, directory=True)
    return file, digest.hexdigest(), size


def _record(root: Path, entry: Entry) -> None:
    """Add ``entry`` to the manifest: read, change and publish it under the root's weights lock."""
    from memq.job import LeaseLock, write_text_atomically

    with LeaseLock(weights_dir(root) / ".manifest.lock"):
        entries = read_manifest(root)
        entries[entry.name] = entry
        write_text_atomically(manifest_path(root), manifest_text(entries))


def _intact(root: Path, entry: Entry) -> bool:
    from memq.job import sha256_file

    path = entry.path(root)
    return path.is_file() and path.stat().st_size == entry.size and sha256_file(path) == entry.sha256


def install(root: Path, name: str, *, file: Path | None = None, model: str | None = None,
            reporter: Reporter | None = None) -> Entry:
    """Install ``name`` on ``root`` (from ``file``, else the Hugging Face cache); idempotent.

    A name keeps its bytes for good: installing other bytes under it is refused (jobs trained on
    the first ones need them). A damaged file is replaced by installing the same source again.
    """
    from memq.job import sha256_file

    reporter = reporter or Reporter()
    if not NAME.fullmatch(name) or name == RANDOM:
        raise UserError(f"{name!r} cannot name weights", hint="letters, digits, _ . - (not `random`)")
    model = _model_of(name, model)
    if file is not None and not file.is_file():
        raise UserError("no such weights file", where=str(file))
    source, label = (file.absolute(), str(file.absolute())) if file is not None else _from_hub(model)
    source_sha = sha256_file(source)
    old = read_manifest(root).get(name)
    if old is not None and old.source_sha256 != source_sha:
        raise UserError(f"{name} is installed from other bytes ({old.source}, sha256 {old.source_sha256[:16]}...)",
                        where=label, hint="jobs trained on a name need its bytes: install these under another name")
    if old is not None and _intact(root, old):
        reporter.note(f"{name}: already installed ({old.file}, sha256 {old.sha256}), skipped")
        return old
    shapes, converted = _shapes(source)
    _check_fits(name, shapes, source)
    stored, sha, size = _store(root, name, source, converted, reporter)
    entry = Entry(name, stored, sha, size, model, label, source_sha)
    _record(root, entry)
    reporter.note(f"{name}: {model} from {label} -> {entry.path(root)} ({size / 1e6:.1f} MB, sha256 {sha})")
    return entry
