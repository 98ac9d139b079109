"""SS2D: forward_type grammar, out-norm variants, official init, and the Mamba-Adaptor hooks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import adaptor_peft.models.vmamba as vm
from adaptor_peft.models import SS2D, VSSM, create_model


def _keys(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize(
    ("forward_type", "expected"),
    [
        ("v05_noz", dict(base="v05", disable_z=True, disable_z_act=False, out_act=False, out_norm="ln")),
        (
            "v05_onsoftmax_noz",
            dict(base="v05", disable_z=True, disable_z_act=False, out_act=False, out_norm="softmax"),
        ),
        (
            "v2_ondwconv3_nozact",
            dict(base="v2", disable_z=False, disable_z_act=True, out_act=False, out_norm="dwconv3"),
        ),
        (
            "v05_oncnorm_oact_no32",
            dict(base="v05", disable_z=False, disable_z_act=False, out_act=True, out_norm="cnorm"),
        ),
        ("v0", dict(base="v0", disable_z=False, disable_z_act=False, out_act=False, out_norm="ln")),
    ],
)
def test_parse_forward_type(forward_type, expected):
    assert vm.parse_forward_type(forward_type) == expected


@pytest.mark.parametrize("bad", ["v06_noz", "v05_noz_onnone", "xv1a", "m0"])
def test_unsupported_forward_type_names_it(bad):
    with pytest.raises(ValueError, match=f"unsupported forward_type {bad!r}"):
        SS2D(d_model=8, forward_type=bad)


@pytest.mark.parametrize("channel_first", [True, False])
def test_out_norm_variant_keys(channel_first):
    def op(ft):
        return SS2D(d_model=16, d_state=1, ssm_ratio=1.0, forward_type=ft, channel_first=channel_first)

    assert {k: s for k, s in _keys(op("v05_noz")).items() if "out_norm" in k} == {
        "out_norm.weight": (16,),
        "out_norm.bias": (16,),
    }
    assert not [k for k in _keys(op("v05_onnone_noz")) if "out_norm" in k]
    assert {k: s for k, s in _keys(op("v05_ondwconv3_noz")).items() if "out_norm" in k} == {
        "out_norm.1.weight": (16, 1, 3, 3)
    }
    assert {k: s for k, s in _keys(op("v05_oncnorm_noz")).items() if "out_norm" in k} == {
        "out_norm.0.weight": (16,),
        "out_norm.0.bias": (16,),
        "out_norm.2.weight": (16, 1, 3, 3),
    }
    assert _keys(op("v05"))["in_proj.weight"] == (32, 16)  # with gate z: x and z halves


@pytest.mark.parametrize("norm_layer", ["ln2d", "ln"])
def test_out_norm_softmax_and_sigmoid_values(norm_layer):
    x = torch.randn(2, 3, 32, 48)
    for ft, check in [
        ("v05_onsoftmax_noz", lambda y, cf: torch.allclose(y.sum((2, 3) if cf else (1, 2)), torch.ones(1))),
        ("v05_onsigmoid_noz", lambda y, cf: bool(((y > 0) & (y < 1)).all())),
    ]:
        model = VSSM(
            depths=[1], dims=[8], ssm_d_state=1, ssm_ratio=1.0, forward_type=ft, norm_layer=norm_layer
        )
        seen = []
        model.layers[0].blocks[0].op.out_norm.register_forward_hook(
            lambda _m, _i, o, seen=seen: seen.append(o)
        )
        with torch.no_grad():
            model(x)
        assert check(seen[0], model.channel_first)
        assert seen[0].shape == ((2, 8, 8, 12) if model.channel_first else (2, 8, 12, 8))


def test_v0_is_channel_last_only():
    with pytest.raises(ValueError, match="channel-last only"):
        VSSM(depths=[1], dims=8, forward_type="v0", norm_layer="ln2d")


def test_official_v0_init_values():
    op = SS2D(d_model=32, d_state=4, ssm_ratio=2.0, initialize="v0", forward_type="v05_noz")
    k, d, r = 4, 64, 2
    assert op.dt_rank == r == math.ceil(32 / 16)
    torch.testing.assert_close(op.A_logs, torch.log(torch.arange(1.0, 5.0)).repeat(k * d, 1))
    torch.testing.assert_close(op.Ds, torch.ones(k * d))
    dt = torch.nn.functional.softplus(op.dt_projs_bias)
    assert dt.min() >= 1e-3 - 1e-6 and dt.max() <= 1e-1 + 1e-6
    assert op.dt_projs_weight.abs().max() <= r**-0.5
    assert op.x_proj_weight.abs().max() <= d**-0.5
    model = VSSM(depths=[1], dims=[16], forward_type="v05_noz", norm_layer="ln2d", ssm_d_state=1)
    assert model.layers[0].blocks[0].op.in_proj.weight.std() < 0.03  # trunc_normal(0.02) on Linear2d too


class _Capture(nn.Module):
    """A stand-in adaptor: records its inputs and returns a constant correction."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.calls: list[tuple] = []

    def forward(self, hs, Cs, H, W, ys):
        self.calls.append((hs, Cs, H, W, ys.shape))
        return ys + torch.full((hs.shape[0], hs.shape[1], hs.shape[3]), self.value)


@pytest.mark.parametrize("source", ["v05", "v0"])
def test_adaptor_t_hook(source, v05_file, v0_file, monkeypatch):
    model = create_model("test_vmamba", checkpoint=v05_file) if source == "v05" else create_model(v0_file)
    model.eval()
    x = torch.randn(1, 3, 16, 32)
    with torch.no_grad():
        base = model(x)
    op = model.layers[1].blocks[0].op
    assert op.adaptor_t is None and op.adaptor_s is None and op.K == 4
    merged = []
    real_merge = vm._kernels.cross_merge
    monkeypatch.setattr(
        vm._kernels, "cross_merge", lambda ys, **kw: merged.append(ys) or real_merge(ys, **kw)
    )
    ys_per_value = []
    for value in (0.0, 0.5):
        op.adaptor_t = _Capture(value)
        merged.clear()
        with torch.no_grad():
            out = model(x)
        ys_per_value.append(merged[1])  # stage 1's merge input (B, 4, D, H, W)
        if value == 0.0:
            torch.testing.assert_close(out, base, atol=1e-6, rtol=0)
    hs, Cs, H, W, ys_shape = op.adaptor_t.calls[0]
    d, n = op.d_inner, op.d_state
    assert (H, W) == (2, 4)  # stage 1 grid of a 16x32 input, rectangular
    assert hs.shape == (1, 4 * d, n, H * W) and hs.dtype == torch.float32
    assert Cs.shape == (1, 4, n, H * W) and ys_shape == (1, 4 * d, H * W)
    torch.testing.assert_close(ys_per_value[1] - ys_per_value[0], torch.full_like(ys_per_value[0], 0.5))
    assert (
        any(k.startswith("layers.1.blocks.0.op.adaptor_t") for k in model.state_dict()) is False
    )  # no params
    op.adaptor_t = None
    with torch.no_grad():
        torch.testing.assert_close(model(x), base, atol=0, rtol=0)


@pytest.mark.parametrize("norm_layer", ["ln2d", "ln"])
def test_adaptor_s_hook_sees_channel_first(norm_layer, v05_file):
    model = create_model("test_vmamba", checkpoint=v05_file, norm_layer=norm_layer).eval()
    x = torch.randn(1, 3, 16, 32)
    with torch.no_grad():
        base = model(x)
    op = model.layers[0].blocks[0].op
    seen = []
    op.adaptor_s = nn.Identity()
    op.adaptor_s.register_forward_hook(lambda _m, i, _o: seen.append(i[0]))
    with torch.no_grad():
        torch.testing.assert_close(model(x), base, atol=0, rtol=0)
    assert seen[0].shape == (1, op.d_inner, 4, 8)
    conv = nn.Conv2d(op.d_inner, op.d_inner, 3, padding=1, groups=op.d_inner)
    op.adaptor_s = conv
    assert "layers.0.blocks.0.op.adaptor_s.weight" in model.state_dict()
    with torch.no_grad():
        assert (model(x) - base).abs().max() > 1e-3


@pytest.mark.parametrize("forward_type", ["v05", "v05_nozact", "v05_ondwconv3_noz", "v05_oncnorm_noz_oact"])
def test_variants_agree_across_layouts(forward_type):
    cfg = dict(depths=[1, 1], dims=[8, 16], ssm_d_state=2, ssm_ratio=2.0, forward_type=forward_type)
    first = VSSM(norm_layer="ln2d", downsample_version="v3", **cfg).eval()
    last = VSSM(norm_layer="ln", downsample_version="v3", **cfg).eval()
    with torch.no_grad():
        for p in first.parameters():
            p.normal_(0, 0.3)
    last.load_state_dict(first.state_dict(), strict=True)
    x = torch.randn(1, 3, 24, 40)
    with torch.no_grad():
        torch.testing.assert_close(last(x), first(x), atol=1e-5, rtol=1e-4)


def test_posembed_key_and_resize_on_load():
    model = VSSM(depths=[1], dims=[8], ssm_d_state=1, forward_type="v05_noz", posembed=True, imgsize=32)
    assert next(iter(model.state_dict())) == "pos_embed"
    assert model.pos_embed.shape == (1, 8, 8, 8)
    assert "pos_embed" in model.no_weight_decay()
    sd = dict(model.state_dict())
    sd["pos_embed"] = torch.ones(1, 8, 4, 4)
    filtered = vm.checkpoint_filter_fn({"model": sd}, model)
    torch.testing.assert_close(filtered["pos_embed"], torch.ones(1, 8, 8, 8))
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_scan_backend_comes_from_dispatch(monkeypatch):
    """No hardcoded backend: the env var reaches the dispatch; set_scan_backend overrides it."""
    model = VSSM(depths=[1], dims=[8], ssm_d_state=1, forward_type="v05_noz", norm_layer="ln2d").eval()
    x = torch.randn(1, 3, 16, 16)
    monkeypatch.setenv("ADAPTOR_PEFT_SCAN", "bogus")
    with pytest.raises(ValueError, match="ADAPTOR_PEFT_SCAN"):
        model(x)
    model.set_scan_backend("ref")
    with torch.no_grad():
        ref = model(x)
    monkeypatch.setenv("ADAPTOR_PEFT_SCAN", "torch")
    model.set_scan_backend(None)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-4)
