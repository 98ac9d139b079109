"""timm training transforms under current Pillow: RandAugment's 0-bit posterize must not raise."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from adaptor_peft.train.augment import create_train_transform, posterize_any_bits


def _image(seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))


def test_posterize_any_bits_keeps_the_old_meaning():
    img = _image()
    assert posterize_any_bits(img, 8) is img
    assert np.array_equal(np.asarray(posterize_any_bits(img, 3)), np.asarray(ImageOps.posterize(img, 3)))
    black = posterize_any_bits(img, 0)
    assert black.size == img.size and black.mode == img.mode and not np.asarray(black).any()


def test_randaugment_top_magnitude_posterize_does_not_raise():
    """rand-m9-mstd0.5-inc1 (the ImageNet recipes') reaches magnitude 10: 0 bits, a crash with timm's op."""
    from timm.data import auto_augment

    tf = create_train_transform(input_size=16, auto_augment="rand-m9-mstd0.5-inc1")
    ops = [op for t in tf.transforms for op in getattr(t, "ops", [])]
    poster = [op for op in ops if op.name == "PosterizeIncreasing"]
    assert len(poster) == 1 and poster[0].aug_fn is posterize_any_bits
    assert all(op.aug_fn is not auto_augment.posterize for op in ops)
    op = poster[0]
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0  # force the top magnitude: 0 bits
    assert op.level_fn(10, op.hparams) == (0,)
    assert not np.asarray(op(_image())).any()
    with pytest.raises(ValueError, match="bits"):  # what timm's own op does with this Pillow
        auto_augment.posterize(_image(), 0)
