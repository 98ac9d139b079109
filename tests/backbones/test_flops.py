"""FLOP / parameter counter: exact small cases, the official VMamba-T figures, and the b1/b2 sizes."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

from adaptor_peft.adaptors import MambaAdaptorConfig, inject_adaptors
from adaptor_peft.flops import count_flops, model_flops_summary
from adaptor_peft.models import mamba_adaptor  # noqa: F401  (registers the family)
from adaptor_peft.models.vmamba import VSSM, released_variant_args


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


def test_vmamba_tiny_s1l8_matches_official_figures() -> None:
    r = count_flops(_meta("vmamba_tiny_s1l8"), img_size=224)
    assert r.params == 30_249_064  # docs/vmamba.md §2.1, exact
    assert r.gflops == pytest.approx(4.9, rel=0.10)  # official 4.9G
    assert r.flops == 4_905_609_984  # regression value of this counter


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
