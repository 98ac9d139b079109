"""Booster parameter groups: base vs adaptor learning rates, no weight decay on norms / biases / scales."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from adaptor_peft.adaptors import MambaAdaptorConfig, inject_adaptors
from adaptor_peft.models import mamba_adaptor  # noqa: F401  (registers the family)
from adaptor_peft.train.booster import booster_param_groups, is_adaptor_param, no_decay_param_names


def _booster_model() -> torch.nn.Module:
    model = timm.create_model("test_vmamba")
    return inject_adaptors(model, MambaAdaptorConfig(), freeze_base=False)


def test_groups_split_base_head_adaptor_and_decay() -> None:
    model = _booster_model()
    groups = booster_param_groups(model, base_lr=1e-5, adaptor_lr=1e-3, weight_decay=0.05, head_lr=1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = {g["group_name"]: [names[id(p)] for p in g["params"]] for g in groups}
    assert list(by_group) == [
        "base_decay", "base_no_decay", "head_decay", "head_no_decay", "adaptor_decay", "adaptor_no_decay"
    ]  # fmt: skip
    settings = {g["group_name"]: (g["lr"], g["weight_decay"]) for g in groups}
    assert settings == {
        "base_decay": (1e-5, 0.05), "base_no_decay": (1e-5, 0.0), "head_decay": (1e-4, 0.05),
        "head_no_decay": (1e-4, 0.0), "adaptor_decay": (1e-3, 0.05), "adaptor_no_decay": (1e-3, 0.0),
    }  # fmt: skip
    every = [n for ns in by_group.values() for n in ns]
    assert sorted(every) == sorted(names.values())  # each trainable parameter exactly once
    assert by_group["head_decay"] == ["classifier.head.weight"]
    assert by_group["head_no_decay"] == ["classifier.head.bias"]
    assert all(is_adaptor_param(n) for n in by_group["adaptor_decay"] + by_group["adaptor_no_decay"])
    assert "layers.0.blocks.0.op.adaptor_t.phi_c.weight" in by_group["adaptor_decay"]
    assert "layers.0.blocks.0.op.adaptor_s.convs.0.weight" in by_group["adaptor_decay"]
    for suffix in ("adaptor_t.gamma", "adaptor_t.phi_c.bias", "adaptor_t.phi_p.bias"):
        assert f"layers.0.blocks.0.op.{suffix}" in by_group["adaptor_no_decay"]
    no_decay_base = set(by_group["base_no_decay"])
    block = "layers.0.blocks.0."
    for name in ("norm.weight", "op.out_norm.bias", "op.A_logs", "op.Ds", "mlp.fc1.bias", "op.dt_projs_bias"):
        assert block + name in no_decay_base, name
    assert {"patch_embed.2.weight", "classifier.norm.weight"} <= no_decay_base
    decay_base = set(by_group["base_decay"])
    assert {"layers.0.blocks.0.op.in_proj.weight", "layers.0.blocks.0.op.x_proj_weight",
            "layers.0.blocks.0.mlp.fc1.weight", "patch_embed.0.weight"} <= decay_base  # fmt: skip


def test_head_defaults_to_base_lr_and_frozen_params_are_left_out() -> None:
    # Norms frozen explicitly (the default trains them): this test is about what a frozen base leaves out.
    config = MambaAdaptorConfig(train_norms=False)
    model = inject_adaptors(timm.create_model("test_vmamba"), config, freeze_base=True)
    groups = booster_param_groups(model, base_lr=1e-5, adaptor_lr=1e-3, weight_decay=0.05)
    assert [g["group_name"] for g in groups] == [
        "head_decay",
        "head_no_decay",
        "adaptor_decay",
        "adaptor_no_decay",
    ]
    assert groups[0]["lr"] == 1e-5
    n_trainable = sum(p.requires_grad for p in model.parameters())
    assert sum(len(g["params"]) for g in groups) == n_trainable


def test_one_adamw_step_moves_adaptors_faster_than_base() -> None:
    model = _booster_model()
    opt = torch.optim.AdamW(booster_param_groups(model, base_lr=1e-6, adaptor_lr=1e-2, weight_decay=0.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(x), y).backward()
    opt.step()
    # Adam's first step moves each parameter with a non-zero gradient by about its group's lr (identity
    # init: gamma and the Adaptor-S convs get gradients, phi only once gamma is non-zero).
    phi = "layers.0.blocks.0.op.adaptor_s.convs.0.weight"
    base = "layers.0.blocks.0.op.in_proj.weight"
    dp = (dict(model.named_parameters())[phi] - before[phi]).abs().max().item()
    db = (dict(model.named_parameters())[base] - before[base]).abs().max().item()
    assert dp == pytest.approx(1e-2, rel=0.01)
    assert db == pytest.approx(1e-6, rel=0.01)
    gamma = "layers.0.blocks.0.op.adaptor_t.gamma"
    moved = (dict(model.named_parameters())[gamma] - before[gamma]).abs().max().item()
    assert 1e-3 < moved <= 1.01e-2  # tiny gradients get less than lr through Adam's eps


def test_mamba_adaptor_no_weight_decay_lists_adaptor_scales() -> None:
    model = timm.create_model("test_mamba_adaptor")
    nwd = model.no_weight_decay()
    assert "layers.0.blocks.0.op.adaptor_t.gamma" in nwd and "layers.0.blocks.0.op.A_logs" in nwd
    assert "layers.0.blocks.0.op.adaptor_t.phi_c.weight" not in nwd
    assert nwd <= no_decay_param_names(model)


def test_invalid_lrs_raise() -> None:
    with pytest.raises(ValueError, match="adaptor_lr must be >= 0, got -1"):
        booster_param_groups(_booster_model(), base_lr=1e-5, adaptor_lr=-1, weight_decay=0.05)
    frozen = timm.create_model("test_vmamba").requires_grad_(False)
    with pytest.raises(ValueError, match="VSSM has no trainable parameters"):
        booster_param_groups(frozen, 1e-5, 1e-3, 0.05)


def test_layer_decay_scales_base_lr_by_depth() -> None:
    model = _booster_model()
    groups = booster_param_groups(model, base_lr=1e-4, adaptor_lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    lr_of = {names[id(p)]: g["lr"] for g in groups for p in g["params"]}
    assert len(lr_of) == len(names)
    # test_vmamba: stem, 5 blocks (downsamples close their stage), head norm -> layers 0..5
    assert lr_of["patch_embed.0.weight"] == pytest.approx(1e-4 * 0.5**5)
    assert lr_of["layers.0.blocks.0.op.in_proj.weight"] == pytest.approx(1e-4 * 0.5**4)
    assert lr_of["layers.0.downsample.1.weight"] == pytest.approx(1e-4 * 0.5**4)
    assert lr_of["layers.3.blocks.0.mlp.fc1.weight"] == pytest.approx(1e-4)
    assert lr_of["classifier.norm.weight"] == pytest.approx(1e-4)
    assert lr_of["classifier.head.weight"] == 1e-4  # the head keeps head_lr (default base_lr)
    assert lr_of["layers.0.blocks.0.op.adaptor_t.phi_c.weight"] == 1e-3  # adaptors are not decayed
    assert "base_decay_layer0" in [g["group_name"] for g in groups]
    with pytest.raises(ValueError, match="layer_decay must be in \\(0, 1\\], got 1.5"):
        booster_param_groups(model, 1e-4, 1e-3, 0.05, layer_decay=1.5)
