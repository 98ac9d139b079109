"""Method ``hybrid`` (issue 16): Mamba-Adaptor (T + S) plus LoRA on in_proj / out_proj.

Oracle: trainable names written out per block and counts from the layer shapes of test_vmamba
(dims 16-32-64-128, depths 1-1-2-1, d_inner = dim, d_state 1, v05_noz: in_proj d -> d, out_proj
d -> d, head 128 -> 10), never from the library.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from adaptor_peft.models import create_model
from adaptor_peft.train.methods import get_method
from adaptor_peft.train.recipes import RecipeError, load_recipe

BLOCKS = [
    "layers.0.blocks.0",
    "layers.1.blocks.0",
    "layers.2.blocks.0",
    "layers.2.blocks.1",
    "layers.3.blocks.0",
]
DIMS = [16, 32, 64, 64, 128]
HEAD = {"classifier.head.weight", "classifier.head.bias"}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("test_vmamba", num_classes=10)


def _recipe(adaptor: dict | None = None, **options: object) -> object:
    return load_recipe(
        {
            "model": "test_vmamba",
            "method": "hybrid",
            "adaptor": adaptor or {},
            "method_options": dict(options),
        }
    )


def _trainable(model: torch.nn.Module) -> dict[str, int]:
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


def test_trainable_names_and_count():
    model = get_method("hybrid").prepare(_model(), _recipe({"train_norms": False}, r=4))  # base frozen
    want = set(HEAD)
    for b in BLOCKS:
        want |= {
            f"{b}.op.adaptor_t.{p}" for p in ("phi_p.weight", "phi_p.bias", "phi_c.weight", "phi_c.bias")
        }
        want |= {f"{b}.op.adaptor_t.gamma"}
        want |= {f"{b}.op.adaptor_s.convs.{i}.weight" for i in range(3)}  # dilations 1, 2, 3, split
        want |= {f"{b}.op.{proj}.lora_{ab}.default.weight" for proj in ("in_proj", "out_proj") for ab in "AB"}
    got = _trainable(model)
    assert set(got) == want
    # per block (S=2 heads x K=4 points = 8 predictor rows, phi shared over the 4 directions):
    # phi_p and phi_c: 8*d weights + 8 biases each; gamma d; Adaptor-S: d channels x 3x3 = 9d;
    # LoRA r=4 on two d x d projections: 2 * (4*d + d*4) = 16d.
    per_block = [2 * (8 * d + 8) + d + 9 * d + 16 * d for d in DIMS]
    assert sum(got.values()) == sum(per_block) + 128 * 10 + 10 == 14138
    base = {n for n, p in model.named_parameters() if ".lora_" not in n and ".adaptor_" not in n}
    assert not any(got.get(n) for n in base - HEAD)  # the base stays frozen


def test_options_reach_both_parts():
    recipe = _recipe({"temporal": False, "train_norms": True, "t_stages": None}, r=2, targets=["op.out_proj"])
    model = get_method("hybrid").prepare(_model(), recipe)
    got = set(_trainable(model))
    assert not any(".adaptor_t." in n for n in got)
    assert all(f"{b}.op.adaptor_s.convs.0.weight" in got for b in BLOCKS)
    assert not any(".in_proj.lora_" in n for n in got)
    assert model.get_submodule("layers.0.blocks.0.op.out_proj").lora_A["default"].weight.shape == (2, 16)
    assert "layers.0.blocks.0.norm.weight" in got  # train_norms from the adaptor mapping


def test_identity_at_init():
    x = torch.randn(2, 3, 32, 32)
    base = _model().eval()
    model = get_method("hybrid").prepare(_model(), _recipe(r=4)).eval()
    with torch.no_grad():
        assert (model(x) - base(x)).abs().max().item() <= 1e-6


def test_save_load_round_trip_exact(tmp_path):
    spec, recipe = get_method("hybrid"), _recipe({"init": "random_phi", "t_stages": [0, 1]}, r=4, alpha=8)
    trained = spec.prepare(_model(), recipe)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    path = spec.save(trained, tmp_path / spec.artefact, {"note": "x"})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert keys == set(_trainable(trained))
    assert json.loads(meta["adaptor_config"])["t_stages"] == [0, 1]
    assert json.loads(meta["lora"])["r"] == 4 and json.loads(meta["lora"])["alpha"] == 8
    loaded = spec.load(spec.prepare(_model(), recipe), path)
    want = {n: p for n, p in trained.named_parameters() if p.requires_grad}
    got = {n: p for n, p in loaded.named_parameters() if p.requires_grad}
    assert want.keys() == got.keys() and all(torch.equal(want[n], got[n]) for n in want)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), trained.eval()(x))


def test_load_refuses_other_settings(tmp_path):
    spec = get_method("hybrid")
    path = spec.save(spec.prepare(_model(), _recipe(r=4)), tmp_path / spec.artefact, {})
    with pytest.raises(ValueError, match=r"saved with lora r=4 .* prepared with r=2"):
        spec.load(spec.prepare(_model(), _recipe(r=2, alpha=4)), path)
    with pytest.raises(
        ValueError, match=r"saved with adaptor_config num_heads=2 .* prepared with num_heads=4"
    ):
        spec.load(spec.prepare(_model(), _recipe({"num_heads": 4}, r=4)), path)
    lora_only = get_method("lora")
    other = lora_only.save(lora_only.prepare(_model(), _recipe(r=4)), tmp_path / "lora.safetensors", {})
    with pytest.raises(ValueError, match=r"metadata key 'adaptor_config' is missing"):
        spec.load(spec.prepare(_model(), _recipe(r=4)), other)


def test_bad_options_are_recipe_errors():
    with pytest.raises(RecipeError, match=r"unknown option\(s\) \['rank'\]"):
        get_method("hybrid").prepare(_model(), _recipe(rank=4))
    with pytest.raises(RecipeError, match=r"unknown adaptor key 'adaptor.num_pts'"):
        get_method("hybrid").prepare(_model(), _recipe({"num_pts": 4}))
    recipe = load_recipe({"model": "test_vmamba", "method": "hybrid", "base_lr": 1e-4})
    with pytest.raises(RecipeError, match="'base_lr' does not apply"):
        get_method("hybrid").prepare(_model(), recipe)


# ---------------------------------------------------------------------------------- gamma_lr
def test_gamma_lr_puts_exactly_the_gammas_in_their_own_group():
    from adaptor_peft.train.trainer import param_groups

    model = get_method("adaptor").prepare(
        _model(),
        load_recipe({"model": "test_vmamba", "method": "adaptor", "adaptor": {"train_norms": False}}),
    )
    plain = param_groups(model, load_recipe({"model": "test_vmamba", "lr": 1e-3}))
    assert [g["name"] for g in plain] == ["adaptor", "adaptor", "head", "head"]  # unchanged without it
    groups = param_groups(model, load_recipe({"model": "test_vmamba", "lr": 1e-3, "gamma_lr": 0.05}))
    ids = {id(p): n for n, p in model.named_parameters()}
    gamma = [g for g in groups if g["name"] == "gamma"]
    assert len(gamma) == 1 and gamma[0]["lr"] == 0.05
    assert sorted(ids[id(p)] for p in gamma[0]["params"]) == sorted(f"{b}.op.adaptor_t.gamma" for b in BLOCKS)
    assert all(g["lr"] == 1e-3 for g in groups if g["name"] == "adaptor")
    together = sum(len(g["params"]) for g in groups)
    assert together == sum(len(g["params"]) for g in plain)  # nothing lost or doubled


def test_gamma_lr_is_validated():
    with pytest.raises(RecipeError, match="gamma_lr.*must be finite and >= 0"):
        load_recipe({"model": "test_vmamba", "gamma_lr": -1.0})
    with pytest.raises(RecipeError, match="gamma_lr.*not supported with layer_decay"):
        load_recipe({"model": "test_vmamba", "gamma_lr": 0.1, "base_lr": 1e-5, "layer_decay": 0.8})
