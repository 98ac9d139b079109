"""Feature pyramids: features_only / forward_intermediates of the b-family and the dense-task backbone."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from adaptor_peft.models import mamba_adaptor  # noqa: F401  (registers the family)
from adaptor_peft.models.backbone import VMambaBackbone
from adaptor_peft.models.checkpoint import CheckpointMismatchError


@pytest.mark.parametrize("size", [(224, 224), (512, 512), (320, 480)])
def test_features_only_shapes(size: tuple[int, int]) -> None:
    model = timm.create_model("test_mamba_adaptor", features_only=True).eval()
    assert model.feature_info.channels() == [16, 32, 64, 128]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, *size))
    h, w = size
    assert [tuple(f.shape) for f in feats] == [
        (1, 16 * 2**i, h // 4 // 2**i, w // 4 // 2**i) for i in range(4)
    ]


@pytest.mark.parametrize(
    "name, channels", [("mamba_adaptor_b1", [48, 96, 192, 384]), ("mamba_adaptor_b2", [96, 192, 384, 768])]
)
def test_b1_b2_pyramid_channels_and_strides(name: str, channels: list[int]) -> None:
    with torch.device("meta"):
        model = timm.create_model(name, features_only=True, out_indices=(1, 3))
    assert model.feature_info.channels() == [channels[1], channels[3]]
    assert model.feature_info.reduction() == [8, 32]
    with torch.device("meta"):
        full = timm.create_model(name, features_only=True)
    assert full.feature_info.channels() == channels and full.feature_info.reduction() == [4, 8, 16, 32]


def test_b1_real_forward_small_nonsquare_input() -> None:
    model = timm.create_model("mamba_adaptor_b1").eval()
    with torch.no_grad():
        final, feats = model.forward_intermediates(torch.randn(1, 3, 32, 64))
        logits = model.forward_head(final)
    assert [tuple(f.shape) for f in feats] == [(1, 48, 8, 16), (1, 96, 4, 8), (1, 192, 2, 4), (1, 384, 1, 2)]
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_backbone_levels_are_outnormed_intermediates() -> None:
    net = timm.create_model("test_mamba_adaptor").eval()
    backbone = VMambaBackbone(net).eval()
    assert backbone.out_channels == [16, 32, 64, 128] and backbone.strides == [4, 8, 16, 32]
    for i in range(4):  # give the out-norms non-trivial affine parameters
        getattr(backbone, f"outnorm{i}").weight.data.uniform_(0.5, 1.5)
        getattr(backbone, f"outnorm{i}").bias.data.normal_()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        levels = backbone(x)
        raw = net.forward_intermediates(x, intermediates_only=True)
    for i, (lvl, r) in enumerate(zip(levels, raw)):
        norm = getattr(backbone, f"outnorm{i}")
        ref = F.layer_norm(r.permute(0, 2, 3, 1), (r.shape[1],), norm.weight, norm.bias, 1e-5).permute(
            0, 3, 1, 2
        )
        torch.testing.assert_close(lvl, ref, atol=1e-5, rtol=1e-5)
    keys = backbone.state_dict().keys()
    assert not any(k.startswith("classifier.") for k in keys)
    assert {k for k in keys if k.startswith("outnorm")} == {
        f"outnorm{i}.{p}" for i in range(4) for p in ("weight", "bias")
    }


def test_backbone_subset_of_levels_and_errors() -> None:
    backbone = VMambaBackbone("test_vmamba", out_indices=(1, 2))
    assert backbone.out_channels == [32, 64] and backbone.strides == [8, 16]
    with torch.no_grad():
        levels = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(t.shape) for t in levels] == [(1, 32, 8, 8), (1, 64, 4, 4)]
    with pytest.raises(ValueError, match="out_indices holds 4, outside the model's stages 0..3"):
        VMambaBackbone("test_vmamba", out_indices=(0, 4))
    with pytest.raises(TypeError, match="wraps a VSSM"):
        VMambaBackbone(torch.nn.Linear(2, 2))


def test_gradients_flow_through_every_pyramid_level() -> None:
    backbone = VMambaBackbone("test_mamba_adaptor")
    levels = backbone(torch.randn(2, 3, 64, 64))
    sum(level.square().mean() for level in levels).backward()
    no_grad = [n for n, p in backbone.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    assert any(".adaptor_t." in n for n, _ in backbone.named_parameters())


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    backbone = VMambaBackbone("test_mamba_adaptor")
    x = torch.randn(2, 3, 32, 32)

    def grads() -> dict[str, torch.Tensor]:
        backbone.zero_grad()
        sum(t.sum() for t in backbone(x)).backward()
        return {n: p.grad.clone() for n, p in backbone.named_parameters()}

    plain = grads()
    backbone.set_grad_checkpointing(True)
    assert all(b.grad_checkpointing for layer in backbone.layers for b in layer.blocks)
    ckpt = grads()
    for name, g in plain.items():
        torch.testing.assert_close(ckpt[name], g, atol=1e-5, rtol=1e-4, msg=name)
    net = timm.create_model("test_mamba_adaptor")
    net.set_grad_checkpointing(True)  # timm API on the classifier, reused from VSSM
    assert all(b.grad_checkpointing for layer in net.layers for b in layer.blocks)


def test_load_classification_checkpoint_reports_outnorm_and_head(tmp_path) -> None:
    src = timm.create_model("test_vmamba").eval()
    path = tmp_path / "cls.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    torch.manual_seed(1)
    backbone = VMambaBackbone("test_vmamba").eval()
    report = backbone.load_classification_checkpoint(path, verbose=False)
    assert sorted(report.missing) == sorted(f"outnorm{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    assert report.unexpected == []
    assert sorted(report.ignored) == sorted(k for k in src.state_dict() if k.startswith("classifier."))
    assert report.loaded == len(src.state_dict()) - len(report.ignored)
    for key, value in backbone.state_dict().items():
        if not key.startswith("outnorm"):
            assert torch.equal(value, src.state_dict()[key]), key
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        raw = src.forward_intermediates(x, intermediates_only=True)
        levels = backbone(x)
    torch.testing.assert_close(
        levels[3], F.layer_norm(raw[3].permute(0, 2, 3, 1), (128,)).permute(0, 3, 1, 2)
    )
    assert "missing keys (8): outnorm0.weight" in str(report)


def test_load_mmdet_style_checkpoint_and_extra_keys(tmp_path) -> None:
    src = VMambaBackbone("test_vmamba")
    state = {f"backbone.{k}": v.contiguous() for k, v in src.state_dict().items()}
    state["neck.lateral.weight"] = torch.zeros(3)  # non-backbone entries of a detector are dropped
    path = tmp_path / "det.safetensors"
    save_file(state, str(path))
    torch.manual_seed(1)
    dst = VMambaBackbone("test_vmamba")
    report = dst.load_classification_checkpoint(path, verbose=False)
    assert report.missing == [] and report.unexpected == [] and report.ignored == []
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in dst.state_dict().items())
    # A plain VMamba checkpoint into a b-model backbone: the adaptor tensors are reported missing.
    cls_path = tmp_path / "plain.safetensors"
    save_file(
        {k: v.contiguous() for k, v in timm.create_model("test_vmamba").state_dict().items()}, str(cls_path)
    )
    rep = VMambaBackbone("test_mamba_adaptor").load_classification_checkpoint(cls_path, verbose=False)
    assert rep.unexpected == [] and all(".adaptor_" in k or k.startswith("outnorm") for k in rep.missing)
    assert any(".adaptor_t." in k for k in rep.missing)


def test_load_checkpoint_of_another_size_names_the_key(tmp_path) -> None:
    other = timm.create_model("test_vmamba", dims=24)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(
        CheckpointMismatchError, match=r"other\.safetensors: tensor 'patch_embed\.0\.weight' has shape"
    ):
        VMambaBackbone("test_vmamba").load_classification_checkpoint(path, verbose=False)


@pytest.mark.parametrize("name, rate", [("mamba_adaptor_b1", 0.1), ("mamba_adaptor_b2", 0.2)])
def test_b1_b2_drop_path_schedule(name: str, rate: float) -> None:
    with torch.device("meta"):
        model = timm.create_model(name)
    blocks = [b for layer in model.layers for b in layer.blocks]
    assert len(blocks) == 14
    probs = [getattr(b.drop_path, "drop_prob", 0.0) for b in blocks]
    assert probs[0] == 0.0 and probs[-1] == pytest.approx(rate)
    assert probs == sorted(probs)
    assert all(b.op.adaptor_t is not None and b.op.adaptor_s is not None for b in blocks)


def test_local_weights_load_through_timm_and_no_release(tmp_path) -> None:
    src = timm.create_model("test_mamba_adaptor")
    path = tmp_path / "b.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst = timm.create_model(
        "test_mamba_adaptor", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    )
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in dst.state_dict().items())
    assert dst.pretrained_cfg["url"] == "" and dst.pretrained_cfg["paper_ids"] == "arXiv:2505.12685"
    with pytest.raises(RuntimeError, match="No pretrained weights exist for mamba_adaptor_b1"):
        timm.create_model("mamba_adaptor_b1", pretrained=True)


def test_backbone_on_channel_last_v0_model() -> None:
    from adaptor_peft.models.vmamba import VSSM, released_variant_args

    args = dict(released_variant_args("vanilla_vmamba_tiny"), dims=16, depths=[1, 1, 1, 1])
    net = VSSM(**args).eval()
    backbone = VMambaBackbone(net).eval()
    assert not backbone.channel_first and type(backbone.outnorm0) is torch.nn.LayerNorm
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        levels, raw = backbone(x), net.forward_intermediates(x, intermediates_only=True)
    assert [tuple(t.shape) for t in levels] == [
        (1, 16, 16, 24),
        (1, 32, 8, 12),
        (1, 64, 4, 6),
        (1, 128, 2, 3),
    ]
    for lvl, r in zip(levels, raw):  # NCHW out, normed over channels
        torch.testing.assert_close(
            lvl, F.layer_norm(r.permute(0, 2, 3, 1), (r.shape[1],)).permute(0, 3, 1, 2)
        )
