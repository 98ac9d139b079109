"""Files shipped inside the package (the small VMamba base, the MNIST subsets) and the ``asset:`` prefix."""

from __future__ import annotations

import os
from pathlib import Path

#: Path prefix for files shipped in the package (``asset:mnist_train.npz``), in recipes and create_model.
ASSET_PREFIX = "asset:"
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
#: The shipped base model: VMamba (v05_noz, 32x32) pretrained on Fashion-MNIST, config in its metadata.
SHIPPED_BASE = "vmamba_fmnist_d32.safetensors"


def resolve_asset(path: str | os.PathLike) -> Path:
    """``asset:NAME`` -> the shipped file's path (checked to exist); other paths are returned as is."""
    text = os.fspath(path)
    if not text.startswith(ASSET_PREFIX):
        return Path(text).expanduser()
    name = text[len(ASSET_PREFIX) :]
    target = ASSETS_DIR / name
    if not name or Path(name).is_absolute() or ".." in Path(name).parts or not target.exists():
        shipped = sorted(p.name for p in ASSETS_DIR.iterdir() if not p.name.startswith("."))
        raise FileNotFoundError(f"{text!r}: no such shipped file; the package ships {', '.join(shipped)}")
    return target


def shipped_base_path() -> Path:
    """Path of the shipped VMamba base (``asset:vmamba_fmnist_d32.safetensors``); create_model builds it."""
    return resolve_asset(ASSET_PREFIX + SHIPPED_BASE)
