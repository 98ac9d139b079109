"""timm training transforms, made safe for current Pillow.

timm's RandAugment "inc1" posterize maps the top magnitudes (reached through the magnitude noise of
`mstd`, e.g. rand-m9-mstd0.5-inc1) to 0 bits. Pillow < 11 turned that into a black image; Pillow >= 11
raises "bits must be between or equal to 1 and 8", which would kill a long training run at a random
step. We keep the old meaning (0 bits: black) by swapping the op's function in the transforms we build,
without touching timm globally.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageOps


def posterize_any_bits(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize for any bit count: >= 8 keeps the image, <= 0 gives black (as Pillow < 11 did)."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _augment_ops(transform: Any) -> list[Any]:
    """Every timm AugmentOp inside a (Compose of) RandAugment / AutoAugment / AugMix transform."""
    found = []
    for t in getattr(transform, "transforms", [transform]):
        found.extend(getattr(t, "ops", []))  # RandAugment, AugMixAugment
        for sub in getattr(t, "policy", []):  # AutoAugment: a list of sub-policies
            found.extend(sub)
    return [op for op in found if hasattr(op, "aug_fn")]


def make_posterize_safe(transform: Any) -> Any:
    """Swap timm's posterize for `posterize_any_bits` in the transform's augment ops; returns it."""
    from timm.data import auto_augment

    for op in _augment_ops(transform):
        if op.aug_fn is auto_augment.posterize:
            op.aug_fn = posterize_any_bits
    return transform


def create_train_transform(**kwargs: Any) -> Any:
    """`timm.data.create_transform(is_training=True, **kwargs)` with a Pillow-safe posterize."""
    from timm.data import create_transform

    return make_posterize_safe(create_transform(is_training=True, **kwargs))


__all__ = ["create_train_transform", "make_posterize_safe", "posterize_any_bits"]
