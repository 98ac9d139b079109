"""Baseline methods: what each trains (names and hand-computed counts), LoRA on Linear2d, save/load."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import adaptor_peft.train.methods.baselines as B
from adaptor_peft.adaptors import MambaAdaptorConfig, inject_adaptors
from adaptor_peft.models import create_model
from adaptor_peft.models.vmamba import Linear2d
from adaptor_peft.train.methods import get_method
from adaptor_peft.train.recipes import RecipeError, load_recipe

# test_vmamba: dims 16-32-64-128, depths 1-1-2-1, ssm_ratio 1 (d_inner = dim), d_state 1, v05_noz,
# no conv bias.
BLOCKS = [
    "layers.0.blocks.0",
    "layers.1.blocks.0",
    "layers.2.blocks.0",
    "layers.2.blocks.1",
    "layers.3.blocks.0",
]
DIMS = [16, 32, 64, 64, 128]  # per block, in BLOCKS order
HEAD = ["classifier.head.weight", "classifier.head.bias"]
HEAD_PARAMS = 128 * 10 + 10


def _model(**kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("test_vmamba", num_classes=10, **kw)


def _v0_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("test_vmamba", num_classes=10, forward_type="v0", norm_layer="ln")


def _recipe(method: str, **options: object) -> object:
    # LoRA options live in method_options; the adaptor variants take MambaAdaptorConfig fields in adaptor.
    key = "method_options" if method.startswith("lora") else "adaptor"
    return load_recipe({"model": "test_vmamba", "method": method, key: dict(options)})


def _trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _n_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _bias_names() -> list[str]:
    names = [f"patch_embed.{i}.bias" for i in (0, 2, 5, 7)]
    for b in BLOCKS:
        names += [f"{b}.norm.bias", f"{b}.op.dt_projs_bias", f"{b}.op.out_norm.bias", f"{b}.norm2.bias",
                  f"{b}.mlp.fc1.bias", f"{b}.mlp.fc2.bias"]  # fmt: skip
    for s in range(3):
        names += [f"layers.{s}.downsample.1.bias", f"layers.{s}.downsample.3.bias"]
    return names + ["classifier.norm.bias"]


EXPECTED_NAMES = {
    "a_tuning": [f"{b}.op.A_logs" for b in BLOCKS],
    "d_tuning": [f"{b}.op.Ds" for b in BLOCKS],
    "conv_tuning": [f"{b}.op.conv2d.weight" for b in BLOCKS],
    "bias_tuning": _bias_names(),
    "lora": [
        f"{b}.op.{proj}.lora_{ab}.default.weight"
        for b in BLOCKS
        for proj in ("in_proj", "out_proj")
        for ab in "AB"
    ],  # fmt: skip
    "linear_probe": [],
}

# Hand counts (without head). d_inner = d, K = 4 directions, N = 1, conv 3x3 depthwise without bias.
SUM_D = sum(DIMS)  # 304
EXPECTED_COUNTS = {
    "a_tuning": 4 * SUM_D * 1,  # A_logs (K*d, N)
    "d_tuning": 4 * SUM_D,  # Ds (K*d,)
    "conv_tuning": 9 * SUM_D,  # (d, 1, 3, 3)
    # patch embed 8+8+16+16; per block norm d + dt bias 4d + out_norm d + norm2 d + fc1 4d + fc2 d = 12d;
    # downsamples (conv + LN, 2d channels each) after stages 0-2; the classifier norm 128.
    "bias_tuning": 48 + 12 * SUM_D + sum(2 * 2 * d for d in (16, 32, 64)) + 128,
    "lora": 2 * 2 * 4 * SUM_D,  # r=4: A (r, d) + B (d, r), on in_proj (d->d) and out_proj (d->d)
    "linear_probe": 0,
}


@pytest.mark.parametrize("method", sorted(EXPECTED_NAMES))
def test_method_trains_exactly_what_it_claims(method: str) -> None:
    options = {"r": 4} if method == "lora" else {}
    model = get_method(method).prepare(_model(), _recipe(method, **options))
    assert _trainable(model) == set(EXPECTED_NAMES[method]) | set(HEAD)
    assert _n_trainable(model) == EXPECTED_COUNTS[method] + HEAD_PARAMS


def test_bias_tuning_count_value() -> None:
    # 48 + 12*304 + (64 + 128 + 256) + 128 = 4272 biases outside the head.
    assert EXPECTED_COUNTS["bias_tuning"] == 4272
    model = get_method("bias_tuning").prepare(_model(), _recipe("bias_tuning"))
    assert _n_trainable(model) - HEAD_PARAMS == 4272


def test_lora_x_trains_x_half_only_on_gated_model() -> None:
    model = _v0_model()  # v0: channel-last nn.Linear in_proj d_model -> 2*d_inner (x, z)
    model = get_method("lora_x").prepare(model, _recipe("lora_x", r=2, alpha=4))
    expected = {f"{b}.op.in_proj.lora_{ab}.weight" for b in BLOCKS for ab in "AB"} | set(HEAD)
    assert _trainable(model) == expected
    # A (r, d_model) + B (d_inner, r) per block with d_model = d_inner = d, r = 2.
    assert _n_trainable(model) == 2 * 2 * SUM_D + HEAD_PARAMS


def test_lora_x_not_applicable_without_gate() -> None:
    with pytest.raises(RecipeError, match=r"LoRAp\(X\).*v05_noz.*no z gate: LoRAp\(X\) is not applicable"):
        get_method("lora_x").prepare(_model(), _recipe("lora_x"))


def test_lora_x_delta_on_x_half_only() -> None:
    torch.manual_seed(1)
    base = torch.nn.Linear(6, 10, bias=False)
    layer = B.LoraXProj(base, d_x=5, r=3, alpha=6.0, channel_first=False)
    x = torch.randn(2, 4, 4, 6)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    delta = 2.0 * (layer.lora_B.weight @ layer.lora_A.weight)  # scaling alpha / r = 2
    expected = base(x) + F.pad(x @ delta.T, (0, 5))
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.delta_weight()[5:], torch.zeros(5, 6))


def test_adaptor_variants_match_the_adaptor_config() -> None:
    for method, overrides in B.ADAPTOR_VARIANTS.items():
        model = get_method(method).prepare(_model(), _recipe(method, num_points=2))
        ref = inject_adaptors(_model(), MambaAdaptorConfig(num_points=2, **overrides))
        assert _trainable(model) == _trainable(ref), method
        assert model.adaptor_config == dataclasses.replace(MambaAdaptorConfig(num_points=2), **overrides)
    # T + S = T only + S only - the head counted twice (norms frozen, else they would be counted twice too).
    counts = {
        m: _n_trainable(get_method(m).prepare(_model(), _recipe(m, train_norms=False)))
        for m in ("adaptor_t", "adaptor_s", "adaptor_ts")
    }
    assert counts["adaptor_ts"] == counts["adaptor_t"] + counts["adaptor_s"] - HEAD_PARAMS


@pytest.mark.parametrize("hw", [(16, 16), (5, 7)])
def test_lora_linear2d_identity_at_init_and_channel_first_delta(hw: tuple[int, int]) -> None:
    # 16x16 with 16 channels is the case where a last-axis LoRA would silently run over W.
    model = B.apply_lora(_model(), r=4, alpha=8, targets=["layers.0.blocks.0.op.in_proj"])
    layer = model.get_submodule("layers.0.blocks.0.op.in_proj")
    assert isinstance(layer, B.LoraLinear2d) and isinstance(layer.base_layer, Linear2d)
    x = torch.randn(2, 16, *hw)
    base_out = F.conv2d(x, layer.base_layer.weight[:, :, None, None])
    torch.testing.assert_close(layer(x), base_out, rtol=0, atol=0)
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    delta_w = 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight  # alpha / r = 2
    expected = base_out + torch.einsum("oi,bihw->bohw", delta_w, x)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.merge()  # peft's merge is right for Linear2d's (out, in) weight
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_lora_model_identity_at_init() -> None:
    x = torch.randn(2, 3, 32, 32)
    base = _model().eval()
    model = get_method("lora").prepare(_model(), _recipe("lora", r=4)).eval()
    torch.testing.assert_close(model(x), base(x), rtol=0, atol=0)


def test_lora_on_channel_last_linear_is_peft_linear() -> None:
    from peft.tuners.lora.layer import Linear as PeftLinear

    model = B.apply_lora(_v0_model(), r=2, alpha=2, targets=["op.out_proj"])
    layer = model.get_submodule("layers.0.blocks.0.op.out_proj")
    assert isinstance(layer, PeftLinear) and not isinstance(layer, B.LoraLinear2d)


def test_lora_options_are_validated() -> None:
    with pytest.raises(RecipeError, match=r"unknown option\(s\) \['rank'\]"):
        get_method("lora").prepare(_model(), _recipe("lora", rank=4))
    with pytest.raises(RecipeError, match="option 'r' must be an int >= 1, got 0"):
        get_method("lora").prepare(_model(), _recipe("lora", r=0))
    with pytest.raises(RecipeError, match=r"LoRA targets \['nope'\] match no module"):
        get_method("lora").prepare(_model(), _recipe("lora", targets=["nope"]))


ROUND_TRIP = ["lora", "a_tuning", "d_tuning", "conv_tuning", "bias_tuning", "adaptor_t", "adaptor_s",
              "adaptor_ts", "adaptor_static"]  # fmt: skip


@pytest.mark.parametrize("method", ROUND_TRIP)
def test_save_load_round_trip(method: str, tmp_path: object) -> None:
    recipe = _recipe(method, r=4) if method == "lora" else _recipe(method)
    spec = get_method(method)
    trained = spec.prepare(_model(), recipe)
    torch.manual_seed(3)
    with torch.no_grad():  # stand-in for training: move every trained tensor
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    path = spec.save(trained, tmp_path / spec.artefact, {"method": method})
    fresh = spec.prepare(_model(), recipe)
    loaded = spec.load(fresh, path)
    want = {n: p for n, p in trained.named_parameters() if p.requires_grad}
    got = {n: p for n, p in loaded.named_parameters() if p.requires_grad}
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), trained.eval()(x), rtol=0, atol=0)


def test_lora_x_round_trip(tmp_path: object) -> None:
    spec, recipe = get_method("lora_x"), _recipe("lora_x", r=2)
    trained = spec.prepare(_v0_model(), recipe)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    path = spec.save(trained, tmp_path / spec.artefact, {})
    loaded = spec.load(spec.prepare(_v0_model(), recipe), path)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), trained.eval()(x), rtol=0, atol=0)


def test_load_refuses_a_file_from_another_method(tmp_path: object) -> None:
    a = get_method("a_tuning")
    path = a.save(a.prepare(_model(), _recipe("a_tuning")), tmp_path / "a.safetensors", {})
    d = get_method("d_tuning")
    with pytest.raises(ValueError, match=r"does not fit the model: missing \['layers.0.blocks.0.op.Ds'"):
        d.load(d.prepare(_model(), _recipe("d_tuning")), path)


def test_one_training_step_changes_only_claimed_tensors() -> None:
    model = get_method("lora").prepare(_model(), _recipe("lora", r=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for _ in range(2):  # two steps: lora_A gets a gradient once lora_B is non-zero
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    trained = _trainable(model)
    for key, value in model.state_dict().items():
        changed = not torch.equal(value, before[key])
        assert changed == (key in trained), key
