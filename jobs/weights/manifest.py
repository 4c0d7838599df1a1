"""Names, the manifest and the checks a weights setting gets (stdlib only: submit imports it).

``ROOT/weights/manifest.json`` maps each installed name to its file, sha256, size, timm model and
source. Files are named by content, ``NAME.<sha256 prefix>.safetensors``: once written a file never
changes, and a name never moves to other bytes (checkpoints hold no frozen weights, so a soup of a
job must see the very weights the job trained on).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

RANDOM = "random"  # the explicit request for randomly initialised frozen weights
WEIGHTS_DIR = "weights"
MANIFEST = "manifest.json"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


@dataclass(frozen=True)
class Known:
    """A name `memq data weights` installs without being told the model: a timm DINOv2 ViT."""

    model: str
    width: int  # the embedding width, checked against an installed file


# The reference's torch.hub names, for the models of mem-spec 2.1 and 1.3.
CATALOGUE = {
    "dinov2_vitb14": Known("vit_base_patch14_dinov2.lvd142m", 768),  # MODEL.BACKBONE
    "dinov2_vits14": Known("vit_small_patch14_dinov2.lvd142m", 384),  # MODEL.BACKBONE_SMALL
    "dinov2_vitl14": Known("vit_large_patch14_dinov2.lvd142m", 1024),  # memory features (cache-features)
}


class WeightsError(ValueError):
    """Weights that must not be used; the message names the setting and how to fix it."""


@dataclass(frozen=True)
class Entry:
    """One installed name."""

    name: str
    file: str  # relative to the weights directory
    sha256: str
    size: int
    model: str  # the timm model the weights are for
    source: str  # where they came from: hf://REPO/FILE or a local path
    source_sha256: str  # of the source file, so that installing it again is recognised

    def path(self, root: Path) -> Path:
        return weights_dir(root) / self.file


def weights_dir(root: Path) -> Path:
    return Path(root) / WEIGHTS_DIR


def manifest_path(root: Path) -> Path:
    return weights_dir(root) / MANIFEST


def read_manifest(root: Path) -> dict[str, Entry]:
    """The installed names (none when nothing was installed)."""
    path = manifest_path(root)
    try:
        rows = json.loads(path.read_text())
        return {name: Entry(**row) for name, row in rows.items()}
    except FileNotFoundError:
        return {}
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{path}: not a weights manifest ({exc})") from None


def manifest_text(entries: dict[str, Entry]) -> str:
    return json.dumps({name: asdict(entry) for name, entry in sorted(entries.items())}, indent=2) + "\n"


def architecture(model: str) -> str:
    """A timm model name without its pretrained tag: ``vit_base_patch14_dinov2``."""
    return model.split(".", 1)[0]


def _suggestion(model: str) -> str:
    return next((name for name, known in CATALOGUE.items() if architecture(known.model) == architecture(model)), "NAME")


def requested(key: str, value: object, model: str) -> str | None:
    """The weights name a setting asks for, or None for ``random``; WeightsError when unset or not a name.

    ``model`` is the timm model the weights are for (it picks the name suggested).
    """
    if value is None or value == "":
        raise WeightsError(f"{key} is not set (the frozen backbone would be random): run `memq data weights` and "
                           f"set it to {_suggestion(model)}, or to `{RANDOM}` for random init")
    if value == RANDOM:
        return None
    text = str(value)
    if not NAME.fullmatch(text):
        raise WeightsError(
            f"{key}: {text!r} is not a weights name (a path is not taken: `memq data weights NAME --file FILE` "
            f"installs a file, then {key}: NAME)"
        )
    return text


def lookup(root: Path, name: str, key: str, model: str) -> Entry:
    """The installed entry of ``name`` for a ``model`` setting; WeightsError naming the fix otherwise.

    Checks what is cheap (the name, the model, the file's size); the sha256 is checked on load.
    """
    entries = read_manifest(root)
    entry = entries.get(name)
    if entry is None:
        have = ", ".join(sorted(entries)) or "none"
        how = f"memq data weights {name}" + ("" if name in CATALOGUE else " --file FILE --model TIMM_MODEL")
        raise WeightsError(f"{key}: no weights named {name!r} on the root {root} (installed: {have}); run `{how}`")
    if architecture(entry.model) != architecture(model):
        raise WeightsError(f"{key}: {name} holds weights of {entry.model}, not of the configured model {model}")
    path = entry.path(root)
    size = path.stat().st_size if path.is_file() else None
    if size != entry.size:
        found = "is missing" if size is None else f"has {size} bytes, not {entry.size}"
        raise WeightsError(f"{key}: the file of {name}, {path}, {found}; run `memq data weights {name}` again")
    return entry


def resolve(root: Path | None, key: str, value: object, model: str) -> Entry | None:
    """The installed entry the setting ``key`` = ``value`` names for ``model`` (see :func:`lookup`),
    None for ``random``; WeightsError naming the fix otherwise."""
    name = requested(key, value, model)
    if name is None:
        return None
    if root is None:
        raise WeightsError(f"{key}: weights {name!r} are looked up on a memq root (--root or MEMQ_ROOT), none given")
    return lookup(root, name, key, model)


def check_setting(root: Path | None, key: str, value: object, model: str) -> None:
    """Submit-time :func:`resolve`: without a root (a dry run without one) only the value is checked."""
    name = requested(key, value, model)
    if name is not None and root is not None:
        lookup(root, name, key, model)
