"""timm API of the VMamba family: pretrained file loading, heads, features, intermediates, checkpointing."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import load_file

import adaptor_peft.models.vmamba as vm
from adaptor_peft.models import create_model


@pytest.fixture(scope="module")
def model(v05_file):
    """test_vmamba with the conformance weights (same layout as small_v05noz_ln2d)."""
    return create_model("test_vmamba", checkpoint=v05_file).eval()


def test_timm_pretrained_file_keeps_head(v05_file, v05_io):
    m = timm.create_model("test_vmamba", pretrained=True, pretrained_cfg_overlay=dict(file=str(v05_file)))
    with torch.no_grad():
        out = m.eval()(v05_io["rect.input"])
    torch.testing.assert_close(out, v05_io["rect.logits"], atol=1e-5, rtol=1e-4)


def test_timm_pretrained_official_pth_new_head(tmp_path, v05_file):
    ref = load_file(str(v05_file))
    sd = {k: (v[:, :, None, None] if k.endswith("in_proj.weight") else v) for k, v in ref.items()}
    path = tmp_path / "official.pth"
    torch.save({"model": sd, "epoch": 1}, path)
    m = timm.create_model(
        "test_vmamba", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=4
    )
    got = m.state_dict()
    assert got["classifier.head.weight"].shape == (4, 128)
    assert all(torch.equal(got[k], ref[k]) for k in ref if not k.startswith("classifier.head."))


def test_head_api(model, v05_io):
    x = v05_io["sq.input"]
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
    assert feats.shape == (1, 128, 2, 2)
    assert pooled.shape == (1, 128)
    torch.testing.assert_close(logits, v05_io["sq.logits"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.get_classifier()(pooled), logits)
    x = torch.randn(1, 3, 16, 16)
    m = create_model("test_vmamba")
    m.reset_classifier(0)
    assert m(x).shape == (1, 128)
    m.reset_classifier(7)
    assert m.get_classifier().out_features == 7 and m(x).shape == (1, 7)
    assert m.pretrained_cfg["classifier"] == "classifier.head"


def test_features_only_rect(v05_file):
    feat = timm.create_model(
        "test_vmamba", features_only=True, pretrained=True, pretrained_cfg_overlay=dict(file=str(v05_file))
    ).eval()
    assert feat.feature_info.reduction() == [4, 8, 16, 32]
    assert feat.feature_info.channels() == [16, 32, 64, 128]
    full = create_model("test_vmamba", checkpoint=v05_file).eval()
    taps = {}
    for i in range(4):
        full.layers[i].blocks.register_forward_hook(lambda _m, _i, o, i=i: taps.__setitem__(i, o))
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        outs = feat(x)
        full(x)
    assert [tuple(o.shape) for o in outs] == [(1, 16, 8, 16), (1, 32, 4, 8), (1, 64, 2, 4), (1, 128, 1, 2)]
    for i, o in enumerate(outs):
        torch.testing.assert_close(o, taps[i])


def test_features_only_channel_last_is_nchw():
    feat = timm.create_model("test_vmamba", features_only=True, out_indices=(1, 3), norm_layer="ln")
    outs = feat(torch.randn(1, 3, 32, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 4, 8), (1, 128, 1, 2)]


def test_forward_intermediates(model, v05_io):
    x = v05_io["rect.input"]
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        ref = model.forward_features(x)
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        early = model.forward_intermediates(x, indices=[1], stop_early=True, output_fmt="NHWC")
        normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)
    torch.testing.assert_close(final, ref)
    assert [tuple(t.shape) for t in inter] == [(2, 16, 12, 20), (2, 32, 6, 10), (2, 64, 3, 5), (2, 128, 2, 3)]
    torch.testing.assert_close(inter[2], v05_io["rect.feat.layers.2.blocks"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(last2[0], inter[2])
    torch.testing.assert_close(early[1][0], inter[1].permute(0, 2, 3, 1))
    assert early[0].shape == (2, 64, 3, 5)  # stopped after stage 1 (and its downsample)
    torch.testing.assert_close(normed[0], model.classifier.norm(inter[3]))


def test_prune_intermediate_layers():
    m = create_model("test_vmamba")
    assert m.prune_intermediate_layers(indices=(0, 1)) == [0, 1]
    assert len(m.layers) == 2 and isinstance(m.layers[1].downsample, torch.nn.Identity)
    assert m.num_features == 32
    assert [
        t.shape[1] for t in m.forward_intermediates(torch.randn(1, 3, 32, 32), intermediates_only=True)
    ] == [
        16,
        32,
    ]


def test_grad_checkpointing_same_output_and_grads(v05_file, monkeypatch):
    calls = []
    real = vm.checkpoint
    monkeypatch.setattr(vm, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(1, 3, 16, 16)
    results = []
    for enable in (False, True):
        m = create_model("test_vmamba", checkpoint=v05_file).train()
        m.set_grad_checkpointing(enable)
        out = m(x)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in m.named_parameters()}))
    assert len(calls) == 5  # once per block, only when enabled
    torch.testing.assert_close(results[0][0], results[1][0])
    for n, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][n], g, msg=n)


def test_channel_last_matches_channel_first(v05_file, v05_io):
    first = create_model("test_vmamba", checkpoint=v05_file).eval()
    last = create_model("test_vmamba", checkpoint=v05_file, norm_layer="ln").eval()
    assert first.channel_first and not last.channel_first
    assert isinstance(last.layers[0].blocks[0].op.in_proj, torch.nn.Linear)
    assert not isinstance(last.layers[0].blocks[0].op.in_proj, vm.Linear2d)
    with torch.no_grad():
        x = v05_io["rect.input"][:1, :, :32]  # 32x80: rectangular, and small
        torch.testing.assert_close(last(x), first(x), atol=1e-5, rtol=1e-4)


def test_no_weight_decay_and_group_matcher():
    m = create_model("test_vmamba")
    nwd = m.no_weight_decay()
    assert "layers.0.blocks.0.op.A_logs" in nwd and "layers.2.blocks.1.op.Ds" in nwd and len(nwd) == 10
    from timm.models import group_parameters

    groups = group_parameters(m, m.group_matcher())
    flat = [n for names in groups.values() for n in names]
    assert sorted(flat) == sorted(n for n, _ in m.named_parameters())
    group_of = {n: i for i, names in enumerate(groups.values()) for n in names}
    assert group_of["patch_embed.0.weight"] == 0
    # A downsample joins the last block of its stage, the head norm the last block (timm's "previous group").
    assert group_of["layers.0.downsample.1.weight"] == group_of["layers.0.blocks.0.norm.weight"] == 1
    assert group_of["layers.2.blocks.1.op.Ds"] == group_of["layers.2.downsample.3.bias"] == 4
    assert group_of["classifier.norm.weight"] == group_of["layers.3.blocks.0.mlp.fc2.bias"] == 5
    assert group_of["classifier.head.weight"] == 6
