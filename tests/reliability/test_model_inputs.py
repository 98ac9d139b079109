"""Bad image batches at the model's public entry points get a clear exception naming the bad value."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from toy import TINY_VMAMBA

from adaptor_peft.models import create_model
from adaptor_peft.models.validation import (
    ImageInputError,
    ImageTypeError,
    NonFiniteInputError,
    check_images,
    input_multiple,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(TINY_VMAMBA, num_classes=3).eval()


def test_valid_batch_passes_unchanged(model):
    x = torch.randn(2, 3, 16, 24)
    assert check_images(x, 4, 3) is x
    assert model(x).shape == (2, 3)


@pytest.mark.parametrize("entry", ["forward", "forward_features"])
@pytest.mark.parametrize("hw", [(30, 32), (32, 18), (17, 17)])
def test_size_not_divisible_by_patch(model, entry, hw):
    h, w = hw
    bad = ", ".join(f"{k}={v}" for k, v in (("H", h), ("W", w)) if v % 4)
    with pytest.raises(
        ImageInputError, match=rf"size {h}x{w} is not divisible by 4 .*patch size 4.*: {bad};"
    ):
        getattr(model, entry)(torch.randn(1, 3, h, w))


def test_opt_in_pad_equals_manual_zero_pad(model):
    x = torch.randn(2, 3, 30, 17)
    manual = torch.nn.functional.pad(x, (0, 3, 0, 2))
    model.pad_to_patch = True
    try:
        padded = model(x)
    finally:
        model.pad_to_patch = False
    torch.testing.assert_close(padded, model(manual), atol=0, rtol=0)
    assert check_images(x, 4, 3, pad=True).shape == (2, 3, 32, 20)


def test_v2_downsample_needs_every_stage_even():
    # kernel-2 stride-2 unpadded downsamples drop an odd last row: 3 of them need multiples of 4 * 8.
    assert (
        input_multiple(4, 4, "v2") == 32
        and input_multiple(4, 4, "v3") == 4
        and input_multiple(4, 4, "v1") == 4
    )
    m = create_model(dict(TINY_VMAMBA, downsample_version="v2"), num_classes=3).eval()
    with pytest.raises(
        ImageInputError, match=r"size 48x32 is not divisible by 32 .*x its 2x downsamples\): H=48"
    ):
        m(torch.randn(1, 3, 48, 32))
    assert m(torch.randn(1, 3, 64, 32)).shape == (1, 3)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 1, 16, 16), r"1 channels at dim 1 but the model expects in_chans=3 .*\(grayscale"),
        (
            (1, 4, 16, 16),
            r"4 channels at dim 1 but the model expects in_chans=3 \(tensor of shape \(1, 4, 16, 16\)\)",
        ),
        ((1, 16, 16, 3), r"16 channels at dim 1 .*looks channel-last \(B, H, W, C\)"),
    ],
)
def test_wrong_channel_count(model, shape, message):
    with pytest.raises(ImageInputError, match=message):
        model(torch.randn(*shape))


def test_in_chans_of_the_model_is_used():
    m = create_model(dict(TINY_VMAMBA, in_chans=1), num_classes=3).eval()
    assert m(torch.randn(1, 1, 16, 16)).shape == (1, 3)
    with pytest.raises(ImageInputError, match=r"3 channels at dim 1 but the model expects in_chans=1"):
        m(torch.randn(1, 3, 16, 16))


def test_empty_batch(model):
    with pytest.raises(ImageInputError, match=r"empty batch \(tensor of shape \(0, 3, 16, 16\)\)"):
        model(torch.randn(0, 3, 16, 16))


def test_empty_spatial_size(model):
    with pytest.raises(ImageInputError, match=r"empty spatial size H=0, W=16"):
        model(torch.randn(2, 3, 0, 16))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (
            (3, 16, 16),
            r"must be 4-D \(B, C, H, W\), got a 3-D tensor of shape \(3, 16, 16\) \(a single image\?",
        ),
        ((1, 1, 3, 16, 16), r"got a 5-D tensor of shape \(1, 1, 3, 16, 16\)"),
        ((16,), r"got a 1-D tensor of shape \(16,\)"),
    ],
)
def test_not_4d(model, shape, message):
    with pytest.raises(ImageInputError, match=message):
        model(torch.randn(*shape))


def test_not_a_tensor(model):
    with pytest.raises(ImageTypeError, match=r"must be a torch.Tensor .*got numpy.ndarray"):
        model(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(TypeError, match=r"got builtins.list"):  # ImageTypeError is also a TypeError
        model([[0.0]])


def test_integer_images(model):
    x = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(
        ImageTypeError, match=r"floating-point tensor, got dtype torch.uint8 .*x.float\(\) / 255"
    ):
        model(x)


def test_sparse_input(model):
    x = torch.zeros(1, 3, 16, 16).to_sparse()
    with pytest.raises(ImageTypeError, match=r"dense \(strided\) tensor, got a torch.sparse_coo tensor"):
        model(x)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_fails_fast_when_enabled(model, value):
    x = torch.randn(3, 3, 16, 16)
    x[2, 1, 5, 5] = value
    x[2, 0, 0, 0] = value
    assert torch.isfinite(model(x)[:2]).all()  # off by default: no check, no sync
    model.check_finite = True
    try:
        with pytest.raises(
            NonFiniteInputError, match=r"holds 2 NaN/Inf value\(s\) .*first affected image: index 2 \(2"
        ):
            model(x)
        assert model(torch.randn(1, 3, 16, 16)).shape == (1, 3)
    finally:
        model.check_finite = False


def test_fixed_position_embedding_grid():
    m = create_model(dict(TINY_VMAMBA, posembed=True, imgsize=16), num_classes=3).eval()
    assert m(torch.randn(1, 3, 16, 16)).shape == (1, 3)
    with pytest.raises(
        ImageInputError, match=re.escape("size 32x16 gives a 8x4 token grid") + r".*needs 4x4"
    ):
        m(torch.randn(1, 3, 32, 16))


def test_released_variant_checks_on_meta_device():
    # The check runs on shapes only, so the 30M-parameter model can be probed without allocating it.
    with torch.device("meta"):
        m = create_model("vmamba_tiny_s1l8", num_classes=10)
    m.check_finite = True  # meta tensors have no values: the finite check is skipped, not crashed
    assert m(torch.empty(1, 3, 224, 224, device="meta")).shape == (1, 10)
    with pytest.raises(ImageInputError, match=r"size 225x224 is not divisible by 4"):
        m(torch.empty(1, 3, 225, 224, device="meta"))


def test_checks_cover_injected_and_backbone_models():
    import timm

    from adaptor_peft import MambaAdaptorConfig, inject_adaptors

    injected = inject_adaptors(
        create_model(TINY_VMAMBA, num_classes=3), MambaAdaptorConfig(num_heads=2, num_points=2)
    )
    backbone = timm.create_model("test_mamba_adaptor", num_classes=3)
    for m in (injected.eval(), backbone.eval()):
        with pytest.raises(ImageInputError, match=r"size 30x32 is not divisible by 4"):
            m(torch.randn(1, 3, 30, 32))
        with pytest.raises(ImageInputError, match=r"empty batch"):
            m(torch.randn(0, 3, 32, 32))
