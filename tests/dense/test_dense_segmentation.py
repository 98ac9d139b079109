"""UPerNet (smp 0.6, `tu-` encoders) on every VMamba family, the helper, and multi-scale inference."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import adaptor_peft  # noqa: F401  (registers the VMamba family with timm)
from adaptor_peft.adaptors import MambaAdaptorConfig
from adaptor_peft.dense.pyramid import ensure_registered, prepare_pyramid

smp = pytest.importorskip("segmentation_models_pytorch")
from adaptor_peft.dense.segmentation import (  # noqa: E402
    MS_SCALES,
    evaluate_segmentation,
    multiscale_inference,
    segmentation_model,
)

# The official v0 layout (channel-last LayerNorm, d_state 16, no MLP) at test size.
V0_TINY = dict(
    ssm_d_state=4, ssm_ratio=2.0, forward_type="v0", norm_layer="ln", downsample_version="v1",
    patchembed_version="v1", mlp_ratio=0.0, ssm_conv_bias=True,
)  # fmt: skip
# Norms frozen explicitly (MambaAdaptorConfig trains them by default): these tests check a frozen base.
ADAPTOR = dict(num_heads=2, num_points=2, dilations=[1, 2, 3], train_norms=False)


@pytest.mark.parametrize(
    "name, kwargs",
    [("test_vmamba", {}), ("test_vmamba", V0_TINY), ("test_mamba_adaptor", {})],
    ids=["v2-ln2d", "v0-ln", "mamba-adaptor"],
)
def test_smp_upernet_tu_encoder_forward_backward(name, kwargs):
    ensure_registered()
    model = smp.UPerNet(
        encoder_name=f"tu-{name}", encoder_weights=None, classes=4, decoder_channels=32, **kwargs
    )
    x = torch.randn(2, 3, 64, 96)
    out = model(x)
    assert out.shape == (2, 4, 64, 96)
    out.square().mean().backward()
    patch = model.encoder.model.model.patch_embed[0].weight
    assert patch.grad is not None and patch.grad.abs().sum() > 0  # the loss reaches the first conv
    # smp saw a stride-4..32 (transformer-style) pyramid: [input, empty stride-2, 4 levels]
    assert model.encoder.out_channels == [3, 0, 16, 32, 64, 128]


def test_helper_with_adaptors_trains_only_adaptors_norms_and_decoder():
    model = segmentation_model("test_vmamba", 5, adaptor=ADAPTOR, decoder_channels=32)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5, 64, 64)
    out.logsumexp(1).mean().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for name in trainable:
        assert (
            ".adaptor_t." in name or ".adaptor_s." in name or ".outnorm" in name
            or name.startswith(("decoder.", "segmentation_head."))
        ), name  # fmt: skip
    gamma = model.encoder.model.layers[0].blocks[0].op.adaptor_t.gamma
    assert gamma.grad is not None and gamma.grad.abs().sum() > 0
    assert model.encoder.model.patch_embed[0].weight.grad is None  # frozen base
    assert {f"encoder.model.outnorm{i}.weight" for i in range(4)} <= trainable


def test_released_vmamba_tiny_with_adaptors_trains_on_cpu():
    model = segmentation_model(
        "vmamba_tiny_s1l8", 150, adaptor=dict(num_heads=4, num_points=4), decoder_channels=32
    )
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 150, 64, 64)
    out.logsumexp(1).mean().backward()
    op = model.encoder.model.layers[3].blocks[1].op
    assert op.adaptor_t.gamma.grad.abs().sum() > 0 and op.adaptor_s.convs[0].weight.grad.abs().sum() > 0
    assert sum(p.numel() for p in model.encoder.parameters() if p.requires_grad) < 0.05 * 29_481_408


def test_identity_adaptors_leave_the_segmentation_unchanged():
    model = segmentation_model("test_vmamba", 3, decoder_channels=32).eval()
    x = torch.randn(1, 3, 64, 64)
    before = model(x)
    prepare_pyramid(model.encoder.model, adaptor=MambaAdaptorConfig(num_heads=2, num_points=2))
    assert model.encoder.model.adaptor_config.num_heads == 2
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


def test_b_model_helper_and_rejects_double_adaptors():
    model = segmentation_model("test_mamba_adaptor", 3, decoder_channels=32)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3, 64, 64)
    assert all(p.requires_grad for p in model.parameters())  # a from-scratch backbone: all trainable
    with pytest.raises(ValueError, match="already has adaptors built in"):
        segmentation_model("test_mamba_adaptor", 3, decoder_channels=32, adaptor=ADAPTOR)


def test_classification_checkpoint_loads_into_the_encoder(tmp_path, capsys):
    import timm

    cls = timm.create_model("test_vmamba")
    path = tmp_path / "cls.safetensors"
    save_file({k: v.contiguous() for k, v in cls.state_dict().items()}, str(path))
    model = segmentation_model("test_vmamba", 3, decoder_channels=32, checkpoint=path)
    enc = model.encoder.model.state_dict()
    for key, value in cls.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(enc[key], value), key
    printed = capsys.readouterr().out
    assert "missing keys (8): outnorm0.weight" in printed and "ignored classifier keys (4)" in printed


class _PixelModel(nn.Module):
    """A 1x1 conv: commutes with flips, so flip-averaging must give the plain prediction back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] % 32 == 0 and x.shape[-2] % 32 == 0  # padded to the stride
        return self.conv(x)


def test_multiscale_inference_returns_input_resolution_and_probabilities():
    model = segmentation_model("test_vmamba", 4, decoder_channels=32).eval()
    x = torch.randn(1, 3, 50, 70)  # not a multiple of 32: padded per scale, cropped back
    probs = multiscale_inference(model, x, scales=MS_SCALES, flip=True)
    assert probs.shape == (1, 4, 50, 70)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 50, 70))
    square = torch.randn(1, 3, 64, 64)
    single = multiscale_inference(model, square, scales=(1.0,), flip=False)
    torch.testing.assert_close(single, model(square).softmax(1))


def test_flip_is_undone_before_averaging():
    model = _PixelModel().eval()
    x = torch.randn(2, 3, 40, 56)
    plain = multiscale_inference(model, x, scales=(1.0,), flip=False)
    torch.testing.assert_close(multiscale_inference(model, x, scales=(1.0,), flip=True), plain)
    torch.testing.assert_close(plain, model.conv(x).softmax(1))
    with pytest.raises(ValueError, match="scales must be positive, got 0"):
        multiscale_inference(model, x, scales=(1.0, 0))


def test_evaluate_segmentation_single_and_multi_scale():
    model = _PixelModel().eval()
    with torch.no_grad():  # class 1 where channel 0 > 0, else class 0
        model.conv.weight.zero_()
        model.conv.bias.zero_()
        model.conv.weight[1, 0] = 10.0
    images = torch.randn(2, 3, 32, 32)
    masks = (images[:, 0] > 0).long()
    masks[0, 0, :4] = 255  # ignored pixels
    ss = evaluate_segmentation(model, [(images, masks)], num_classes=4)
    assert ss["mIoU"] == pytest.approx(1.0) and ss["aAcc"] == pytest.approx(1.0)
    flipped = torch.where(masks == 255, masks, 1 - masks)  # every labelled pixel wrong
    wrong = evaluate_segmentation(model, [(images, flipped)], num_classes=2)
    assert wrong["mIoU"] == pytest.approx(0.0)
