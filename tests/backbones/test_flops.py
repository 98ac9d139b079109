"""FLOP / parameter counter: exact small cases, the official VMamba-T figures, and the b1/b2 sizes."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn as nn

from adaptor_peft.adaptors import MambaAdaptorConfig, inject_adaptors
from adaptor_peft.flops import count_flops, model_flops_summary
from adaptor_peft.models import mamba_adaptor  # noqa: F401  (registers the family)
from adaptor_peft.models.vmamba import VSSM, LayerNorm2d, VSSBlock, released_variant_args


def vss_block_macs(c: int, tokens: int, d_state: int, ssm_ratio: float, mlp_ratio: float) -> dict[str, int]:
    """MACs of one v05_noz / ln2d VSS block over `tokens` positions, layer by layer from its shapes.

    Counter convention: LayerNorm 5 per element, Linear/conv their MACs (no bias), activations 0; the
    SS2D internals as in flops.py's docstring (K = 4 scan directions).
    """
    d, n, r, hidden, k = int(ssm_ratio * c), d_state, math.ceil(c / 16), int(mlp_ratio * c), 4
    return {
        "norm": 5 * c * tokens,
        "in_proj": tokens * c * d,  # c -> d (no gate z)
        "conv2d": tokens * d * 9,  # depthwise 3x3
        "x_proj": k * tokens * d * (r + 2 * n),  # d -> (dt rank + B + C), per direction
        "dt_proj": k * tokens * r * d,  # rank -> d, per direction
        "scan": 9 * tokens * k * d * n + k * d * tokens,  # selective scan + D skip
        "out_norm": 5 * d * tokens,
        "out_proj": tokens * d * c,
        "norm2": 5 * c * tokens,
        "fc1": tokens * c * hidden,
        "fc2": tokens * hidden * c,
    }


def vmamba_v2_macs(dims, depths, img: int, d_state: int, mlp_ratio: float, num_classes: int) -> int:
    """MACs of a v2-layout VMamba (v2 stem, v3 downsample, ssm_ratio 1) on an img x img RGB input."""

    def half(size: int) -> int:  # 3x3 conv, stride 2, padding 1
        return (size - 1) // 2 + 1

    h1 = half(img)
    h = half(h1)
    total = h1 * h1 * (dims[0] // 2) * 3 * 9 + 5 * (dims[0] // 2) * h1 * h1  # stem conv 1 + LN
    total += h * h * dims[0] * (dims[0] // 2) * 9 + 5 * dims[0] * h * h  # stem conv 2 + LN
    for i, (c, depth) in enumerate(zip(dims, depths)):
        total += depth * sum(vss_block_macs(c, h * h, d_state, 1.0, mlp_ratio).values())
        if i < len(dims) - 1:
            h = half(h)
            total += h * h * dims[i + 1] * c * 9 + 5 * dims[i + 1] * h * h  # downsample conv + LN
    c = dims[-1]
    return total + 5 * c * h * h + c * h * h + c * num_classes  # classifier LN, avg pool, head


def _meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name)


def test_conv_linear_norm_pool_follow_fvcore() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8*8 out * 8 ch * 3*3*3 = 13,824
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8),  # depthwise: 64 * 8 * 9 = 4,608
        nn.GroupNorm(2, 8),  # 512 elements * 5 = 2,560
        nn.AdaptiveAvgPool2d(1),  # 512 input elements
        nn.Flatten(1),
        nn.Linear(8, 5),  # 40
    )
    r = count_flops(model, img_size=8)
    assert r.by_category["conv"] == 13_824 + 4_608
    assert r.by_category["norm"] == 2_560
    assert r.by_category["pool"] == 512
    assert r.by_category["linear"] == 40
    assert r.flops == 13_824 + 4_608 + 2_560 + 512 + 40
    assert r.params == sum(p.numel() for p in model.parameters())


def test_scan_and_projection_formulas_on_one_stage() -> None:
    # One stage, one block, no MLP, dims 8, d_state 2, 16x16 input -> 4x4 tokens (L = 16).
    args = dict(released_variant_args("test_vmamba"), depths=[1], dims=[8], ssm_d_state=2, mlp_ratio=0.0)
    model = VSSM(**args)
    r = count_flops(model, img_size=16, batch=2)
    b, k, d, n, length, rank = 2, 4, 8, 2, 16, 1  # dt_rank = ceil(8/16) = 1
    assert r.by_category["selective_scan"] == 9 * b * length * k * d * n + b * k * d * length
    assert r.by_category["ssm_proj"] == b * k * (rank + 2 * n) * d * length + b * k * d * rank * length


def test_adaptor_counts_phi_gather_softmax_readout_and_convs() -> None:
    args = dict(released_variant_args("test_vmamba"), depths=[1], dims=[8], mlp_ratio=0.0)
    model = VSSM(**args)
    plain = count_flops(model, img_size=16)
    cfg = MambaAdaptorConfig(num_heads=2, num_points=3, share_across_directions=False, dilations=(1, 2))
    inject_adaptors(model, cfg)
    r = count_flops(model, img_size=16)
    k, d, n, length, s, pts = 4, 8, 1, 16, 2, 3
    phi = 2 * k * length * d * n * s * pts  # phi_p and phi_c, per token and direction
    gather = k * length * 2 * pts * d * n
    softmax = k * length * s * pts
    readout = k * length * d * n
    assert r.by_category["adaptor_t"] == phi + gather + softmax + readout
    assert r.by_category["adaptor_s"] == length * 9 * d  # split depthwise 3x3 over all D channels
    assert r.flops == plain.flops + phi + gather + softmax + readout + length * 9 * d


def test_one_vss_block_layer_by_layer() -> None:
    """One block (d_inner = 2 * d_model, d_state 3, MLP 2x) on a 4x5 grid, batch 3, against its shapes."""
    c, tokens, batch = 16, 4 * 5, 3
    block = VSSBlock(c, norm_layer=LayerNorm2d, channel_first=True, ssm_d_state=3, ssm_ratio=2.0,
                     ssm_conv_bias=False, forward_type="v05_noz", mlp_ratio=2.0)  # fmt: skip
    r = count_flops(block, img_size=(4, 5), batch=batch, in_chans=c)
    m = {k: batch * v for k, v in vss_block_macs(c, tokens, 3, 2.0, 2.0).items()}
    assert m["in_proj"] == 3 * 20 * 16 * 32 and m["scan"] == 3 * (9 * 20 * 4 * 32 * 3 + 4 * 32 * 20)
    assert r.by_category["norm"] == m["norm"] + m["out_norm"] + m["norm2"]
    assert r.by_category["linear"] == m["in_proj"] + m["out_proj"] + m["fc1"] + m["fc2"]
    assert r.by_category["conv"] == m["conv2d"]
    assert r.by_category["ssm_proj"] == m["x_proj"] + m["dt_proj"]
    assert r.by_category["selective_scan"] == m["scan"]
    assert r.flops == sum(m.values())


@pytest.mark.parametrize("img", [64, 52])  # 52: odd grids after the stride-2 convs (13 -> 7 -> 4)
def test_whole_test_vmamba_from_the_shapes(img: int) -> None:
    r = count_flops(_meta("test_vmamba"), img_size=img)
    assert r.flops == vmamba_v2_macs([16, 32, 64, 128], [1, 1, 2, 1], img, 1, 4.0, 10)


def test_vmamba_tiny_s1l8_matches_official_figures() -> None:
    r = count_flops(_meta("vmamba_tiny_s1l8"), img_size=224)
    assert r.params == 30_249_064  # docs/vmamba.md §2.1, exact
    assert r.gflops == pytest.approx(4.9, rel=0.10)  # official 4.9G
    analytic = vmamba_v2_macs([96, 192, 384, 768], [2, 2, 8, 2], 224, 1, 4.0, 1000)
    assert r.flops == analytic == 4_905_609_984  # every layer's MACs written out from the shapes


@pytest.mark.parametrize(
    "name, params, gflops",
    [("vanilla_vmamba_tiny", 22_893_448, 5.6), ("vmamba_small_s2l15", 50_147_752, 8.7)],
)
def test_other_released_families_match_official_flops(name: str, params: int, gflops: float) -> None:
    r = count_flops(_meta(name), img_size=224)  # v0 (channel-last, N=16, gate z) and s2 (ssm_ratio 2)
    assert r.params == params
    assert r.gflops == pytest.approx(gflops, rel=0.02)


@pytest.mark.parametrize(
    "name, mparams, gflops",
    [("mamba_adaptor_b1", 7.8, 1.4), ("mamba_adaptor_b2", 32.0, 5.4)],
)
def test_b1_b2_within_ten_percent_of_paper(name: str, mparams: float, gflops: float) -> None:
    r = count_flops(_meta(name), img_size=224)
    assert r.mparams == pytest.approx(mparams, rel=0.10)
    assert r.gflops == pytest.approx(gflops, rel=0.10)
    assert r.by_category["adaptor_t"] > 0 and r.by_category["adaptor_s"] > 0


def test_batch_scales_linearly_and_input_model_untouched() -> None:
    model = timm.create_model("test_mamba_adaptor")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one, four = count_flops(model, img_size=64), count_flops(model, img_size=64, batch=4)
    assert four.flops == 4 * one.flops
    assert four.gflops == pytest.approx(one.gflops)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert (
        model.layers[0].blocks[0].op.forward_core.__func__ is type(model.layers[0].blocks[0].op).forward_core
    )


def test_summary_text_for_the_cli() -> None:
    text = model_flops_summary("test_mamba_adaptor", img_size=64)
    assert text.startswith("model test_mamba_adaptor  input 1x3x64x64")
    r = count_flops(timm.create_model("test_mamba_adaptor"), img_size=64)
    assert f"params {r.params:,}" in text and f"FLOPs {r.flops:,}" in text
    with pytest.raises(ValueError, match="unknown model 'no_such_net'"):
        model_flops_summary("no_such_net")


def test_adaptor_override_and_backbone_counts() -> None:
    with torch.device("meta"):
        shared = timm.create_model("mamba_adaptor_b1", adaptor=dict(share_across_directions=True))
    assert shared.adaptor_config.share_across_directions and shared.adaptor_config.num_heads == 4
    per_dir = count_flops(_meta("mamba_adaptor_b1"))
    r = count_flops(shared)
    assert r.flops == per_dir.flops  # sharing phi saves parameters, not compute
    # per direction and block: phi_p + phi_c weights (2 x S*K x D) and biases (2 x S*K), gamma (D)
    d_sum, blocks, sk = 2 * 48 + 2 * 96 + 8 * 192 + 2 * 384, 14, 16
    assert r.params_by_category["adaptor_t"] == (2 * sk + 1) * d_sum + 2 * sk * blocks
    assert per_dir.params - r.params == 3 * r.params_by_category["adaptor_t"]
    from adaptor_peft.models.backbone import VMambaBackbone

    net = timm.create_model("test_vmamba")
    full = count_flops(net, img_size=64)
    bb = count_flops(VMambaBackbone(net), img_size=64)
    outnorms = 5 * sum(16 * 2**i * (16 // 2**i) ** 2 for i in range(4))  # LN: 5 per element per level
    assert bb.flops == full.flops - full.by_stage["head"] + outnorms
