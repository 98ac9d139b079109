"""trainable_report against parameter counts written out by hand from the layer shapes.

Nothing here sums p.numel() over a selection like the report does: every count comes from the
architecture (VMamba v2 layout: v2 stem, v05_noz SS2D, ln2d norms, v3 downsample) and the adaptor
formulas (Adaptor-T: phi_p, phi_c (S*K x in) + bias, gamma; Adaptor-S: depthwise k x k convolutions).
Report categories: "norm" = LayerNorm weight+bias, "bias" = other tensors named `bias` (conv and MLP
biases; `dt_projs_bias` is not one), "other" = every other base tensor, "head" = the classifier Linear.
"""

from __future__ import annotations

import math

import pytest
import torch
from toy import TINY_VMAMBA

from adaptor_peft.adaptors import MambaAdaptorConfig, inject_adaptors, trainable_report
from adaptor_peft.models import create_model


def base_counts(dims, depths, d_state, ssm_ratio, mlp_ratio, num_classes, in_chans=3):
    """{"norm", "bias", "other", "head"} parameter counts of a v2-layout VMamba, from its shapes."""
    norm = bias = other = 0
    half = dims[0] // 2
    other += in_chans * half * 9 + half * dims[0] * 9  # stem: two 3x3 convs
    bias += half + dims[0]
    norm += 2 * half + 2 * dims[0]  # stem: LN(dim/2), LN(dim)
    for i, (c, depth) in enumerate(zip(dims, depths)):
        d, n, r, hidden = int(ssm_ratio * c), d_state, math.ceil(c / 16), int(mlp_ratio * c)
        per_block_other = (
            4 * (r + 2 * n) * d  # x_proj_weight (K=4 directions)
            + 4 * d * n  # A_logs
            + 4 * d  # Ds
            + 4 * d * r  # dt_projs_weight
            + 4 * d  # dt_projs_bias (not named "bias")
            + c * d  # in_proj (no z: v05_noz, no bias)
            + d * 9  # depthwise 3x3 conv, no bias (ssm_conv_bias False)
            + d * c  # out_proj
            + c * hidden  # fc1 weight
            + hidden * c  # fc2 weight
        )
        other += depth * per_block_other
        bias += depth * (hidden + c)  # fc1, fc2 biases
        norm += depth * (2 * c + 2 * d + 2 * c)  # norm, out_norm, norm2
        if i < len(dims) - 1:  # v3 downsample: 3x3 stride-2 conv with bias + LN
            other += c * dims[i + 1] * 9
            bias += dims[i + 1]
            norm += 2 * dims[i + 1]
    norm += 2 * dims[-1]  # classifier norm
    return {"norm": norm, "bias": bias, "other": other, "head": dims[-1] * num_classes + num_classes}


def adaptor_counts(d_inners, d_state, cfg: dict):
    """(Adaptor-T, Adaptor-S) parameter counts over blocks of the given d_inner, from the config."""
    heads, points = cfg.get("num_heads", 2), cfg.get("num_points", 4)
    groups = 1 if cfg.get("share_across_directions", True) else 4
    dilations, k = cfg.get("dilations", (1, 2, 3)), cfg.get("kernel_size", 3)
    t = s = 0
    for d in d_inners:
        fan_in = d * d_state if cfg.get("phi_input", "state") == "state" else d
        sk = heads * points
        phi_c = groups * (sk * fan_in + sk)
        phi_p = groups * (sk * fan_in + sk) if cfg.get("selection", "dynamic") == "dynamic" else groups * sk
        t += phi_p + phi_c + groups * d  # + gamma
        # split: the depthwise groups cover the d channels once; sum: one full-width branch per dilation
        s += d * k * k * (1 if cfg.get("aggregation", "split") == "split" else len(dilations))
    return t, s


TINY = dict(TINY_VMAMBA, num_classes=5)  # dims 8-64, depths 1-1-1-1, d_state 1, mlp 2


def _tiny_base():
    base = base_counts(TINY["dims"], TINY["depths"], 1, 1.0, 2.0, 5)
    assert base["head"] == 64 * 5 + 5
    return base


def test_default_config_on_tiny_model():
    base = _tiny_base()
    cfg = {}
    t, s = adaptor_counts([8, 16, 32, 64], 1, cfg)
    # default: S=2, K=4, shared phi (G=1), D*N inputs: per block 2*(8*D + 8) + D, plus 9*D for Adaptor-S
    assert (t, s) == (sum(17 * d + 16 for d in (8, 16, 32, 64)), 9 * 120)
    model = inject_adaptors(create_model(TINY), MambaAdaptorConfig(**cfg))
    rep = trainable_report(model)
    base_total = sum(base.values())
    # default train_norms=True: every LayerNorm weight+bias trains too (counted in base_counts)
    trained_no_head = t + s + base["norm"]
    assert rep.total_params == base_total + t + s
    assert rep.base_params == base_total and rep.head_params == base["head"]
    assert rep.base_params_no_head == base_total - base["head"]
    assert rep.adaptor_params == t + s
    assert rep.trainable_params == trained_no_head + base["head"]
    assert rep.trainable_params_no_head == trained_no_head
    assert rep.trainable_pct == pytest.approx(100.0 * (trained_no_head + base["head"]) / base_total)
    assert rep.trainable_pct_no_head == pytest.approx(100.0 * trained_no_head / (base_total - base["head"]))
    assert rep.by_type == {
        "adaptor_t": {"params": t, "trainable": t},
        "adaptor_s": {"params": s, "trainable": s},
        "head": {"params": base["head"], "trainable": base["head"]},
        "norm": {"params": base["norm"], "trainable": base["norm"]},
        "bias": {"params": base["bias"], "trainable": 0},
        "other": {"params": base["other"], "trainable": 0},
    }
    text = str(rep)
    pct = 100.0 * (trained_no_head + base["head"]) / base_total
    pct_no_head = 100.0 * trained_no_head / (base_total - base["head"])
    assert f"trainable (with head): {trained_no_head + base['head']:,} = {pct:.3f}% of the base" in text
    assert (
        f"trainable (no head):   {trained_no_head:,} = {pct_no_head:.3f}% of the base without the head"
        in text
    )
    assert f"base model:            {base_total:,} params ({base_total - base['head']:,} without" in text


def test_other_config_norms_biases_and_selected_stages():
    """Per-direction phi on mean states, static offsets, summed 5x5 branches on stages 1 and 3 only;
    no head training, but norms and biases train (the head's bias is a bias: it trains too)."""
    base = _tiny_base()
    cfg = dict(num_heads=4, num_points=3, share_across_directions=False, phi_input="state_mean",
               selection="static", aggregation="sum", dilations=(1, 2), kernel_size=5, stages=(1, -1),
               train_head=False, train_norms=True, train_biases=True)  # fmt: skip
    t, s = adaptor_counts([16, 64], 1, cfg)
    # per block: 4 directions x (phi_c 12*D + 12, static offsets 12, gamma D); sum: 2 branches x 25*D
    assert t == sum(4 * (12 * d + 12 + 12 + d) for d in (16, 64)) and s == 2 * 25 * 80
    model = inject_adaptors(create_model(TINY), MambaAdaptorConfig(**cfg))
    rep = trainable_report(model)
    base_total = sum(base.values())
    trained_no_head = t + s + base["norm"] + base["bias"]
    assert rep.base_params == base_total and rep.adaptor_params == t + s
    assert rep.trainable_params == trained_no_head + 5  # + classifier.head.bias
    assert rep.trainable_params_no_head == trained_no_head
    assert rep.trainable_pct == pytest.approx(100.0 * (trained_no_head + 5) / base_total)
    assert rep.trainable_pct_no_head == pytest.approx(100.0 * trained_no_head / (base_total - base["head"]))
    assert rep.by_type["head"] == {"params": base["head"], "trainable": 5}
    assert rep.by_type["norm"] == {"params": base["norm"], "trainable": base["norm"]}
    assert rep.by_type["bias"] == {"params": base["bias"], "trainable": base["bias"]}
    assert rep.by_type["other"] == {"params": base["other"], "trainable": 0}


def test_vmamba_tiny_default_budget_from_the_formulas():
    """VMamba-T (dims 96-768, depths 2-2-8-2, mlp 4) with 100 classes: the figures the docs quote."""
    base = base_counts([96, 192, 384, 768], [2, 2, 8, 2], 1, 1.0, 4.0, 100)
    d_inners = [96] * 2 + [192] * 2 + [384] * 8 + [768] * 2
    t, s = adaptor_counts(d_inners, 1, {})
    assert sum(base.values()) - base["head"] == 29_480_064 and base["head"] == 76_900
    assert (t, s) == (88_352, 46_656)  # docs: 88,352 Adaptor-T + 46,656 Adaptor-S
    # default train_norms=True: docs: + 35,616 norm parameters = 170,624 without the head (0.58%)
    assert base["norm"] == 35_616 and t + s + base["norm"] == 170_624
    with torch.device("meta"):
        model = create_model("vmamba_tiny_s1l8", num_classes=100)
    rep = trainable_report(inject_adaptors(model, MambaAdaptorConfig()))
    assert rep.base_params == sum(base.values()) and rep.head_params == base["head"]
    assert rep.adaptor_params == t + s
    assert rep.trainable_params == t + s + base["norm"] + base["head"]
    assert rep.trainable_params_no_head == t + s + base["norm"]
    assert rep.trainable_pct == pytest.approx(
        100.0 * (t + s + base["norm"] + base["head"]) / sum(base.values())
    )
    assert rep.trainable_pct_no_head == pytest.approx(100.0 * (t + s + base["norm"]) / 29_480_064)
    assert f"{rep.trainable_pct_no_head:.2f}" == "0.58"  # docs: 0.58% of the base without the head
    assert {k: rep.by_type[k]["params"] for k in ("norm", "bias", "other")} == {
        k: base[k] for k in ("norm", "bias", "other")
    }
