"""A tiny VMamba config and a synthetic, learnable image dataset for the tests (examples run in seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: The released v2 layout (v05_noz, ln2d, v2 embed, v3 downsample, d_state 1) at dims 8: ~9k parameters.
TINY_VMAMBA: dict = dict(
    patch_size=4,
    in_chans=3,
    dims=[8, 16, 32, 64],
    depths=[1, 1, 1, 1],
    ssm_d_state=1,
    ssm_ratio=1.0,
    ssm_dt_rank="auto",
    ssm_act_layer="silu",
    ssm_conv=3,
    ssm_conv_bias=False,
    ssm_drop_rate=0.0,
    ssm_init="v0",
    forward_type="v05_noz",
    mlp_ratio=2.0,
    mlp_act_layer="gelu",
    mlp_drop_rate=0.0,
    gmlp=False,
    drop_path_rate=0.0,
    patch_norm=True,
    norm_layer="ln2d",
    downsample_version="v3",
    patchembed_version="v2",
    posembed=False,
    imgsize=16,
)


def toy_images(n: int, num_classes: int = 4, size: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 (n, size, size), y int64): class c is a bright bar at a class-specific place plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    rng.shuffle(y)
    x = rng.integers(0, 60, size=(n, size, size)).astype(np.int64)
    band = max(1, size // num_classes)
    for i, c in enumerate(y):
        if c % 2 == 0:
            x[i, (c // 2) * band * 2 % size : (c // 2) * band * 2 % size + band, :] += 180
        else:
            x[i, :, (c // 2) * band * 2 % size : (c // 2) * band * 2 % size + band] += 180
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


def write_toy_npz(
    path: str | os.PathLike, n: int, num_classes: int = 4, size: int = 12, seed: int = 0
) -> Path:
    """Write toy_images(...) as an (x, y) .npz file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x, y = toy_images(n, num_classes, size, seed)
    np.savez_compressed(path, x=x, y=y)
    return path
